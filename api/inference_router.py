"""The API's side of serving: where each inference request goes, the call to a model server, and its record.

One :class:`InferenceRouter` per API process (opened in the app's cleanup context) owns:

- the routing table (``api.routing_table``), re-read from Postgres every ``routing_refresh_s``
  by a background task, at once when a model server says a replica changed state (a
  ``core.serving_signals.REPLICAS_CHANNEL`` notification on the process's ``api.pg_listener``),
  and on demand (coalesced) when a replica turns a request away;
- the requests held for a cold start (``api.cold_start``): a deployed version with no ready
  replica and a ``cold_start_timeout_ms`` budget gets its requests held, not refused, while the
  placer loads one (asked once per burst with ``signal_demand``); each table refresh wakes them;
- the keep-alive connections to the model servers (``api.model_server_client``), and the
  count of requests in flight to each (for the choice of replica);
- the :class:`~api.prediction_recorder.PredictionRecorder`;
- the model servers' metrics, fetched when the API's ``/metrics`` is scraped.

:meth:`InferenceRouter.infer` is the one synchronous inference path: resolve the target,
check the inputs against its signature (before anything is queued), send the arrays
(``core.tensor_wire``), and when a replica answers 421 (draining, unloading, not loaded) or
cannot be reached, refresh the table and try another — at most ``MAX_ATTEMPTS`` sends (a
replica unloaded under a request sends it back to waiting for a cold start). Every request that
reached a known version is recorded; each one that waited for a cold start is observed in
``maas_cold_start_seconds`` (``on_cold_start``) when it is sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import math
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from api.cold_start import ClientGone, ColdStartGate, Full
from api.context import CONTEXT
from api.model_server_client import ModelServerClient, Unreachable
from api.pg_listener import LISTENER, PgListener
from api.prediction_recorder import PredictionRecorder, prediction_row
from api.routing_table import (
    DeployedRow,
    NoRoute,
    NotReady,
    ReplicaRow,
    RoutableReplica,
    RouteError,
    RoutingTable,
    ServedVersion,
    Target,
    VersionRow,
    build_table,
    pick_replica,
)
from api.serving_metrics import ServingMetricsCollector
from core.deployments import BatchingSettings, live_since, load_failure
from core.models import Deployment, Model, ModelReplica, ModelServerRecord, ModelVersion
from core.serving_signals import REPLICAS_CHANNEL, signal_demand
from core.settings import Settings
from core.tensor_codec import CodecError, InferenceRequest, validate_against_signature
from core.tensor_wire import CONTENT_TYPE, WireError, pack, unpack

log = logging.getLogger("maas.api.inference")

MAX_ATTEMPTS = 3
# a model the table does not know is looked for again (a deployment newer than the table) at most this often
NO_ROUTE_REFRESH_GAP_S = 0.05
NOT_SERVED_HERE = 421
METRICS_TIMEOUT_S = 2.0
RETRY_AFTER = {"Retry-After": "1"}
# what a model server's error status means to the client, and the error code it is recorded with
SERVER_ERRORS = {400: (400, "invalid_input"), 503: (503, "queue_full"), 504: (504, "timeout")}


class InferenceFailed(Exception):
    """The request cannot be answered; ``status`` and ``message`` go to the client as an OIP error."""

    def __init__(self, status: int, message: str, code: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code
        self.headers = dict(headers or {})


class _TryElsewhere(Exception):
    """This replica cannot take the request (421 or unreachable); another one may."""


@dataclass(frozen=True)
class _Hold:
    """What waiting for a cold start needs to know about one request."""

    tenant_id: str
    name: str
    version: int | None
    arrived: float  # monotonic
    transport: str
    gone: Callable[[], bool] | None


@dataclass(frozen=True)
class InferenceResult:
    request: InferenceRequest
    outputs: dict[str, np.ndarray]
    target: Target
    stats: dict[str, Any]


@dataclass
class InferenceRouter:
    settings: Settings
    db: async_sessionmaker
    table: RoutingTable = field(default_factory=RoutingTable)
    server_metrics: ServingMetricsCollector = field(default_factory=ServingMetricsCollector)
    # called with (transport, outcome) once per request answered: "ok" or the error code it is recorded with
    on_answer: Callable[[str, str], None] = field(default=lambda transport, outcome: None)
    # called with (transport, seconds from arrival to being sent) for each request that waited for a cold start
    on_cold_start: Callable[[str, float], None] = field(default=lambda transport, seconds: None)

    def __post_init__(self) -> None:
        self.recorder = PredictionRecorder(self.settings, self.db)
        self._client: aiohttp.ClientSession | None = None  # for the servers' /metrics
        self._servers = ModelServerClient()
        self._in_flight: Counter[str] = Counter()
        self._turns = itertools.count()
        self._refresh_lock = asyncio.Lock()
        self._refreshed_at = float("-inf")
        self._signatures: dict[str, Mapping[str, Any]] = {}  # versions are immutable: cached for good
        self._task: asyncio.Task[None] | None = None
        self._refresh_wanted = asyncio.Event()
        self.cold_starts = ColdStartGate(self.settings.cold_start_max_waiting, self._demand)
        self._demands: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ lifecycle

    async def start(self, listener: PgListener | None = None) -> None:
        """Open the connections and start the refresh loop; ``listener`` (when given) wakes it on replica changes."""
        if listener is not None:
            listener.subscribe(REPLICAS_CHANNEL, self._replicas_changed, on_connect=self._refresh_wanted.set)
        connector = aiohttp.TCPConnector(limit=1000, keepalive_timeout=60)
        self._client = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(sock_connect=2))
        with contextlib.suppress(Exception):  # the loop keeps trying; a database outage shows on /readyz
            await self.refresh()
        self._task = asyncio.get_running_loop().create_task(self._refresh_loop(), name="routing-table")
        self.recorder.start()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for task in list(self._demands):
            with contextlib.suppress(Exception):
                await task
        await self.recorder.stop()
        await self._servers.close()
        if self._client is not None:
            await self._client.close()

    # ------------------------------------------------------------ the routing table

    async def refresh(self, newer_than: float | None = None) -> None:
        """Re-read the table; with ``newer_than``, only if no read started after that moment (coalesces callers)."""
        async with self._refresh_lock:
            if newer_than is not None and self._refreshed_at >= newer_than:
                return
            started = time.monotonic()
            self.table = await self._read_table()
            self._refreshed_at = started
        self.cold_starts.wake_all()

    def _replicas_changed(self, version_id: str) -> None:
        self._refresh_wanted.set()  # the loop re-reads now; a burst of notices costs one or two reads

    async def _refresh_loop(self) -> None:
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can lose a cancellation that lands as it times out
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.routing_refresh_s):
                    await self._refresh_wanted.wait()
            self._refresh_wanted.clear()  # before the read: a notice during it asks for one more
            try:
                await self.refresh()
            except Exception as exc:  # keep routing with the last table: the servers in it may well be alive
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # a driver turned our cancellation into its own error
                    raise asyncio.CancelledError from exc
                log.warning("could not refresh the routing table: %s", exc)

    async def _read_table(self) -> RoutingTable:
        alive = ModelServerRecord.heartbeat_at > live_since(self.settings)
        deployed_q = (
            select(Deployment, ModelVersion.id, ModelVersion.version, Model.tenant_id, Model.name)
            .join(ModelVersion, ModelVersion.id == Deployment.model_version_id)
            .join(Model, Model.id == Deployment.model_id)
        )
        ready_q = (
            select(
                ModelServerRecord.id,
                ModelServerRecord.url,
                ModelVersion.id,
                ModelVersion.version,
                Model.id,
                Model.tenant_id,
                Model.name,
            )
            .select_from(ModelReplica)
            .join(ModelServerRecord, ModelServerRecord.id == ModelReplica.server_id)
            .join(ModelVersion, ModelVersion.id == ModelReplica.model_version_id)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(ModelReplica.status == "ready", alive)
        )
        async with self.db() as session:
            deployed = (await session.execute(deployed_q)).all()
            ready = (await session.execute(ready_q)).all()
            server_urls = select(ModelServerRecord.id, ModelServerRecord.url).where(alive)
            servers = dict((await session.execute(server_urls)).all())
            replica_states = (
                await session.execute(
                    select(ModelReplica.model_version_id, ModelReplica.status, ModelReplica.error)
                    .join(ModelServerRecord, ModelServerRecord.id == ModelReplica.server_id)
                    .where(ModelReplica.model_version_id.in_([row[1] for row in deployed]), alive)
                )
            ).all()
            version_ids = {row[1] for row in deployed} | {row[2] for row in ready}
            missing = version_ids - self._signatures.keys()
            if missing:
                found = await session.execute(
                    select(ModelVersion.id, ModelVersion.signature).where(ModelVersion.id.in_(missing))
                )
                self._signatures.update(found.all())
        states: dict[str, list[tuple[str, str | None]]] = {}
        for vid, status, error in replica_states:
            states.setdefault(vid, []).append((status, error))

        return build_table(
            [
                DeployedRow(
                    VersionRow(tenant, name, d.model_id, vid, number, self._signatures[vid]),
                    BatchingSettings.of(d),
                    cold_start_timeout_ms=d.cold_start_timeout_ms,
                    failed=load_failure(states.get(vid, ()), d.placement_error),
                )
                for d, vid, number, tenant, name in deployed
            ],
            [
                ReplicaRow(VersionRow(tenant, name, model_id, vid, number, self._signatures[vid]), server_id, url)
                for server_id, url, vid, number, model_id, tenant, name in ready
            ],
            servers,
        )

    # ------------------------------------------------------------ inference

    async def lookup(self, tenant_id: str, name: str, version: int | None, arrived: float | None = None) -> Target:
        """The request's target: with ready replicas, or (a cold start) the deployed version with none yet.

        Raises :class:`RouteError`. A model this table does not know may have been deployed since
        the last read: the table is read again (coalesced with any read started after ``arrived``).
        """
        try:
            return self._resolve(tenant_id, name, version)
        except NoRoute:
            if arrived is None:
                arrived = time.monotonic()
            if self._refreshed_at >= arrived:
                raise
            # requests for unknown models must not turn into a table read each: at most one per gap
            wait_s = self._refreshed_at + NO_ROUTE_REFRESH_GAP_S - time.monotonic()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            await self.refresh(newer_than=arrived)
            return self._resolve(tenant_id, name, version)

    def _resolve(self, tenant_id: str, name: str, version: int | None) -> Target:
        try:
            return self.table.resolve(tenant_id, name, version)
        except NotReady as exc:
            if exc.pending is None:
                raise
            return exc.pending

    async def infer(
        self,
        tenant_id: str,
        name: str,
        version: int | None,
        decode: Callable[[], InferenceRequest],
        *,
        transport: str = "http",
        deadline_ms: int | None = None,
        gone: Callable[[], bool] | None = None,
    ) -> InferenceResult:
        """Run one request on a replica; raises :class:`RouteError` or :class:`InferenceFailed`.

        ``decode`` parses the request (raising ``CodecError``); it is called once the model is known
        to be served, so an unknown model is a 404 whatever the body holds. ``transport`` (http, grpc)
        labels its record and count; ``deadline_ms``, the client's own deadline, bounds its time in the
        queue like Triton's ``timeout`` parameter, so a request past it is dropped there, never run.
        A request for a deployment with no ready replica waits for one (see ``api.cold_start``) up to
        the deployment's ``cold_start_timeout_ms``; ``gone()`` (when given) says its client left, which
        ends the wait.
        """
        arrived = time.monotonic()
        started_at = datetime.now(UTC)
        target: Target | None = None
        try:
            target = await self.lookup(tenant_id, name, version, arrived)
            try:
                request = decode()
            except CodecError as exc:
                raise InferenceFailed(400, str(exc), "invalid_input") from None
            timeout_ms = effective_timeout_ms(request_timeout_ms(request) or 0, deadline_ms) or None
            hold = _Hold(tenant_id, name, version, arrived, transport, gone)
            result = await self._run(hold, request, target, timeout_ms)
        except NotReady as exc:
            deployed = _deployed_version(self.table, tenant_id, name)
            self._record_failure(tenant_id, deployed, started_at, exc, transport)
            raise
        except InferenceFailed as exc:
            self._record_failure(tenant_id, target.version if target else None, started_at, exc, transport)
            raise
        except asyncio.CancelledError:  # the client went away or its deadline passed
            cancelled = InferenceFailed(499, "the client cancelled the request or its deadline passed", "cancelled")
            self._record_failure(tenant_id, target.version if target else None, started_at, cancelled, transport)
            raise
        self.recorder.record(
            prediction_row(
                tenant_id=tenant_id,
                model_version_id=result.target.version.version_id,
                started_at=started_at,
                stats=result.stats,
                transport=transport,
            ),
            rows=request_rows(result.request),
        )
        self.on_answer(transport, "ok")
        return result

    async def _run(
        self, hold: _Hold, request: InferenceRequest, target: Target, timeout_ms: int | None
    ) -> InferenceResult:
        refused: set[tuple[str, str]] = set()
        failed_at: float | None = None
        for _ in range(MAX_ATTEMPTS):
            if not target.version.replicas:
                check_inputs(request, target, self.settings.max_tensor_elements)  # a bad request does not wait
                target = await self._await_replica(hold, target)
            replica = self._choose(target, refused)
            if replica is None and failed_at is not None:
                await self.refresh(newer_than=failed_at)
                target = self._resolve(hold.tenant_id, hold.name, hold.version)
                if not target.version.replicas:  # unloaded under us (scaled to zero): a cold start again
                    target = await self._await_replica(hold, target)
                replica = self._choose(target, refused)
            if replica is None:
                break
            check_inputs(request, target, self.settings.max_tensor_elements)
            try:
                outputs, stats = await self._send(replica.server_id, replica.url, target, request, timeout_ms)
            except _TryElsewhere:
                log.info("model server %s turned away a request for %s; trying another", replica.server_id, hold.name)
                refused.add((replica.server_id, target.version.version_id))
                failed_at = time.monotonic()
                continue
            return InferenceResult(request, outputs, target, stats)
        message = f"no replica of model '{hold.name}' could take the request (it is being redeployed); retry"
        raise InferenceFailed(503, message, "unavailable", RETRY_AFTER)

    async def _await_replica(self, hold: _Hold, pending: Target) -> Target:
        """Hold the request until the pending target's deployment has a ready replica (a cold start)."""
        budget_ms = pending.model.cold_start_timeout_ms
        version_id = pending.version.version_id

        def ready() -> Target | None:
            try:
                found = self.table.resolve(hold.tenant_id, hold.name, hold.version)
            except NotReady as exc:
                if exc.pending is None:  # its load failed, or it may no longer wait
                    raise
                return None
            return found  # NoRoute (undeployed meanwhile) ends the wait too

        try:
            target = await self.cold_starts.wait(
                version_id, pending.model.model_id, ready, hold.arrived + budget_ms / 1000, hold.gone
            )
        except Full as exc:
            raise InferenceFailed(
                503,
                f"model '{hold.name}' has no ready replica and too many requests wait for one ({exc}); retry",
                "cold_start_full",
                RETRY_AFTER,
            ) from None
        except TimeoutError:
            raise InferenceFailed(
                503,
                f"model '{hold.name}' has no ready replica: none became ready within its cold_start_timeout_ms "
                f"({budget_ms} ms); retry",
                "cold_start_timeout",
                RETRY_AFTER,
            ) from None
        except ClientGone:
            raise InferenceFailed(
                499, "the client went away while its request waited for a cold start", "cancelled"
            ) from None
        self.on_cold_start(hold.transport, time.monotonic() - hold.arrived)
        return target

    def _demand(self, model_id: str) -> None:
        """Ask the placer for a replica of the model's deployment (in the background: the request waits anyway)."""
        task = asyncio.get_running_loop().create_task(self._signal_demand(model_id), name=f"demand-{model_id}")
        self._demands.add(task)
        task.add_done_callback(self._demands.discard)

    async def _signal_demand(self, model_id: str) -> None:
        try:
            async with self.db() as session:
                await session.run_sync(lambda sync: signal_demand(sync, model_id))
                await session.commit()
        except Exception as exc:  # the placer still scales up on its own pass; the request waits its budget
            log.warning("could not signal demand for model %s: %s", model_id, exc)

    def _choose(self, target: Target, refused: set[tuple[str, str]]) -> RoutableReplica | None:
        version_id = target.version.version_id
        exclude = {server for server, version in refused if version == version_id}
        return pick_replica(target.version.replicas, self._in_flight, next(self._turns), exclude)

    async def _send(
        self, server_id: str, url: str, target: Target, request: InferenceRequest, timeout_ms: int | None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        timeout = effective_timeout_ms(target.batching.timeout_ms if target.batching else 0, timeout_ms)
        body = pack(request.arrays(), {"timeout_ms": timeout})
        # the model server enforces the queue timeout; this only guards against a server that hangs
        guard_s = (timeout / 1000 if timeout else 0) + 300
        self._in_flight[server_id] += 1
        try:
            status, payload = await self._servers.post(
                url, f"/v1/infer/{target.version.version_id}", body, CONTENT_TYPE, guard_s
            )
        except Unreachable as exc:
            log.warning("model server %s at %s unreachable: %s", server_id, url, exc)
            raise _TryElsewhere from exc
        except TimeoutError:
            raise InferenceFailed(504, "the model server did not answer in time", "timeout") from None
        finally:
            self._in_flight[server_id] -= 1
        if status == 200:
            try:
                return unpack(payload)
            except WireError as exc:
                raise InferenceFailed(500, f"the model server sent a broken answer: {exc}", "server_error") from None
        if status == NOT_SERVED_HERE:
            raise _TryElsewhere
        message = _error_message(payload, status)
        client_status, code = SERVER_ERRORS.get(status, (500, "model_error"))
        raise InferenceFailed(client_status, message, code, RETRY_AFTER if client_status == 503 else None)

    def _record_failure(
        self,
        tenant_id: str,
        version: ServedVersion | None,
        started_at: datetime,
        exc: InferenceFailed | RouteError,
        transport: str,
    ) -> None:
        code = exc.code if isinstance(exc, InferenceFailed) else "not_ready"
        message = exc.message if isinstance(exc, InferenceFailed) else str(exc)
        error = {"code": code, "message": message, "status": exc.status}
        self.on_answer(transport, code)
        if version is None:
            return  # no version to attach it to
        self.recorder.record(
            prediction_row(
                tenant_id=tenant_id,
                model_version_id=version.version_id,
                started_at=started_at,
                error=error,
                transport=transport,
            )
        )

    # ------------------------------------------------------------ metrics

    async def scrape_model_servers(self) -> None:
        """Fetch every live model server's metrics into :attr:`server_metrics`."""
        assert self._client is not None, "the router is not started"
        client = self._client
        servers = dict(self.table.servers)

        async def fetch(url: str) -> str | None:
            try:
                async with client.get(f"{url}/metrics", timeout=aiohttp.ClientTimeout(METRICS_TIMEOUT_S)) as r:
                    return await r.text() if r.status == 200 else None
            except (aiohttp.ClientError, TimeoutError):
                return None

        texts = await asyncio.gather(*(fetch(url) for url in servers.values()))
        self.server_metrics.update({sid: text for sid, text in zip(servers, texts, strict=True) if text is not None})


def request_timeout_ms(request: InferenceRequest) -> int | None:
    """Triton's per-request ``timeout`` parameter (microseconds), in milliseconds, when given."""
    value = request.parameters.get("timeout")
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise InferenceFailed(
            400, "request parameter 'timeout' must be a non-negative integer (microseconds)", "invalid_input"
        )
    return math.ceil(value / 1000)


def request_rows(request: InferenceRequest) -> int:
    """The rows (first dimension) of a request: what usage counts as its items."""
    shape = request.inputs[0].shape if request.inputs else ()
    return int(shape[0]) if shape else 1


def effective_timeout_ms(deployment_ms: int, request_ms: int | None) -> int:
    """The queue timeout of one request: the shorter of the deployment's and the request's (0: none)."""
    limits = [ms for ms in (deployment_ms, request_ms) if ms]
    return min(limits) if limits else 0


def check_inputs(request: InferenceRequest, target: Target, max_elements: int) -> None:
    """The request against the target's signature and batch limit: :class:`InferenceFailed` 400 naming the input."""
    try:
        validate_against_signature(request.inputs, target.version.signature, max_elements, outputs=request.outputs)
    except CodecError as exc:
        raise InferenceFailed(400, str(exc), "invalid_input") from None
    batching = target.batching
    for tensor in request.inputs:
        rows = tensor.shape[0] if tensor.shape else 0
        if batching is not None and rows > batching.max_batch_size:
            raise InferenceFailed(
                400,
                f"input '{tensor.name}' has {rows} rows (its first dimension) but the deployment's max_batch_size "
                f"is {batching.max_batch_size}; send at most that many per request",
                "invalid_input",
            )


def _deployed_version(table: RoutingTable, tenant_id: str, name: str) -> ServedVersion | None:
    model = table.models.get((tenant_id, name))
    if model is None or model.deployed is None:
        return None
    return model.versions.get(model.deployed)


def _error_message(payload: bytes, status: int) -> str:
    try:
        return str(json.loads(payload)["error"])
    except (ValueError, KeyError, TypeError):
        return f"the model server answered {status}"


ROUTER = web.AppKey("inference_router", InferenceRouter)


async def serving_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context (after the one that opens the database): the app's router, at ``app[ROUTER]``."""
    ctx = app[CONTEXT]
    router = InferenceRouter(
        ctx.settings, ctx.db, on_answer=ctx.metrics.count_inference, on_cold_start=ctx.metrics.observe_cold_start
    )
    ctx.metrics.registry.register(router.server_metrics)
    router.recorder.on_record = ctx.usage.count_prediction
    await router.start(app[LISTENER])
    app[ROUTER] = router
    yield
    await router.stop()
