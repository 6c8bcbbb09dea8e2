"""The model server: the data plane of an inference worker, where deployed models run.

It lives in the main process of every Celery worker that consumes the ``inference`` queue, in
a thread with its own event loop (started on ``worker_ready``, stopped on ``worker_shutdown``),
so the API never runs a model. It:

- listens on ``model_server_host:model_server_port`` (0: a free port) for the API:
  ``POST /v1/infer/{model_version_id}`` (``core.tensor_wire`` in and out), ``GET /metrics``,
  ``GET /healthz``;
- registers in ``model_servers`` and heartbeats every ``model_server_heartbeat_s``; the live
  servers delete the rows of servers silent for ``model_server_timeout_s`` (their replicas go
  with them);
- every ``model_server_poll_s`` compares the deployments with what it holds and follows
  ``workers.model_plan``: loads deployed versions (download, sha256 check, ONNX Runtime session,
  warm-up, dynamic batcher), reports each as a ``model_replicas`` row (loading → ready, or
  failed with the reason), rebuilds a batcher whose deployment settings changed, and drains
  then drops a version that is no longer deployed once its successor is ready here;
- runs up to ``inference_concurrent_batches`` batches of a model at once (:class:`Lanes`), so
  the next batch forms and starts while one runs instead of waiting for its results to travel.

Answers of the infer route: 200 outputs (+ ``queue_ms``, ``inference_ms``, ``batch_id``,
``batch_size``); 400 input the batcher refuses; 421 this server does not serve that version
(unknown, loading, unloading): the API retries elsewhere; 503 queue full (Retry-After);
504 timed out in the queue (never run); 500 the model call failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from core.artifact_store import ArtifactStore
from core.db import async_session_factory, make_async_engine
from core.deployments import BatchingSettings, live_since
from core.dynamic_batcher import BatcherClosed, DynamicBatcher, InvalidItem, QueueFull, QueueTimeout
from core.ids import new_id
from core.models import Artifact, Deployment, Model, ModelReplica, ModelVersion
from core.models import ModelServer as ServerRow
from core.settings import Settings
from core.tensor_wire import CONTENT_TYPE, WireError, pack, unpack
from workers.model_loader import Arrays, OnnxModel, inference_threads, load_model
from workers.model_plan import DRAINING, FAILED, LOADING, READY, UNLOADING, Held, Wanted, plan
from workers.model_server_metrics import ModelLabels, ModelServerMetrics
from workers.runtime import runtime

log = logging.getLogger("maas.model_server")

INFERENCE_QUEUE = "inference"
NOT_SERVED_HERE = 421  # Misdirected Request: the API asks another replica
STOP_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Deployed:
    """A deployed version with what loading it takes."""

    wanted: Wanted
    labels: ModelLabels
    signature: dict[str, Any]
    sha256: str
    storage_key: str


@dataclass
class Replica:
    """A version this server holds, in whatever state it is."""

    version_id: str
    model_id: str
    labels: ModelLabels
    status: str
    since: float
    batching: BatchingSettings | None = None
    model: OnnxModel | None = None
    batcher: DynamicBatcher | None = None
    lanes: Lanes | None = None
    error: str | None = None

    def held(self) -> Held:
        return Held(self.version_id, self.model_id, self.status, self.batching, self.since)


@dataclass
class ModelServer:
    settings: Settings
    store: ArtifactStore
    id: str = field(default_factory=lambda: new_id("model_server"))
    url: str = ""
    replicas: dict[str, Replica] = field(default_factory=dict)
    metrics: ModelServerMetrics = field(default_factory=ModelServerMetrics)

    def __post_init__(self) -> None:
        self.threads = inference_threads(self.settings)
        # APIs re-read their routing table this often; a retired version serves two of those periods
        self.grace_s = 2 * self.settings.routing_refresh_s
        self._engine: AsyncEngine | None = None
        self._db: async_sessionmaker | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resync = False

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        self._engine = make_async_engine(self.settings)
        self._db = async_session_factory(self._engine)
        app = web.Application(client_max_size=self.settings.max_inference_body_bytes + (1 << 20))
        app.router.add_post("/v1/infer/{version_id}", self._infer)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.model_server_host, self.settings.model_server_port)
        await site.start()
        port = self._runner.addresses[0][1]
        host = self.settings.model_server_advertise_host or self.settings.model_server_host
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        await self._register()
        self._spawn(self._every(self.settings.model_server_heartbeat_s, self.heartbeat), "heartbeat")
        self._spawn(self._every(self.settings.model_server_poll_s, self.reconcile), "control-loop")
        log.info("model server %s listening on %s with %d threads per model", self.id, self.url, self.threads)

    async def stop(self) -> None:
        """Stop taking new work gracefully: announce draining, let APIs notice, finish what is queued, leave."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        serving = [replica for replica in self.replicas.values() if replica.status == READY]
        for replica in serving:
            await self._set_status(replica, DRAINING)
        if serving:
            await asyncio.sleep(self.grace_s)
        await asyncio.gather(
            *(r.batcher.drain() for r in self.replicas.values() if r.batcher is not None), return_exceptions=True
        )
        for replica in self.replicas.values():
            if replica.lanes is not None:
                replica.lanes.shutdown()
        with contextlib.suppress(Exception):
            async with self._db() as session:
                await session.execute(delete(ServerRow).where(ServerRow.id == self.id))
                await session.commit()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._engine is not None:
            await self._engine.dispose()
        log.info("model server %s stopped", self.id)

    def _spawn(self, coroutine: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _every(self, interval_s: float, step: Any) -> None:
        while True:
            try:
                await step()
            except Exception:
                log.exception("model server %s: %s failed; trying again", self.id, step.__name__)
            await asyncio.sleep(interval_s)

    # ------------------------------------------------------------ registration

    async def _register(self) -> None:
        async with self._db() as session:
            await session.execute(
                insert(ServerRow)
                .values(id=self.id, url=self.url, hostname=socket.gethostname(), pid=os.getpid(), threads=self.threads)
                .on_conflict_do_update(index_elements=[ServerRow.id], set_={"heartbeat_at": func.now()})
            )
            for replica in self.replicas.values():
                await session.execute(self._replica_upsert(replica))
            await session.commit()

    async def heartbeat(self) -> None:
        async with self._db() as session:
            alive = (
                await session.execute(update(ServerRow).where(ServerRow.id == self.id).values(heartbeat_at=func.now()))
            ).rowcount
            await session.execute(delete(ServerRow).where(ServerRow.heartbeat_at < live_since(self.settings)))
            await session.commit()
        if not alive or self._resync:
            # our row was taken for a dead server's (we stalled), or a status write failed: say it all again
            self._resync = False
            await self._register()

    def _replica_upsert(self, replica: Replica) -> Any:
        values = {"status": _db_status(replica.status), "error": replica.error, "updated_at": func.now()}
        return (
            insert(ModelReplica)
            .values(server_id=self.id, model_version_id=replica.version_id, **values)
            .on_conflict_do_update(index_elements=[ModelReplica.server_id, ModelReplica.model_version_id], set_=values)
        )

    async def _set_status(self, replica: Replica, status: str) -> None:
        """Change a replica's status here, and report it; a failed report is repeated by the next heartbeat."""
        replica.status, replica.since = status, time.monotonic()
        try:
            async with self._db() as session:
                await session.execute(self._replica_upsert(replica))
                await session.commit()
        except Exception as exc:
            log.warning("could not report %s as %s (the next heartbeat will): %s", replica.labels, status, exc)
            self._resync = True

    # ------------------------------------------------------------ control loop

    async def _deployed(self) -> dict[str, Deployed]:
        statement = (
            select(Deployment, ModelVersion, Model.tenant_id, Model.name, Artifact.storage_key)
            .join(ModelVersion, ModelVersion.id == Deployment.model_version_id)
            .join(Model, Model.id == Deployment.model_id)
            .join(Artifact, Artifact.id == ModelVersion.artifact_id)
        )
        async with self._db() as session:
            rows = (await session.execute(statement)).all()
        return {
            version.id: Deployed(
                wanted=Wanted(version.id, deployment.model_id, BatchingSettings.of(deployment)),
                labels=ModelLabels(tenant_id, name, str(version.version)),
                signature=version.signature,
                sha256=version.sha256,
                storage_key=storage_key,
            )
            for deployment, version, tenant_id, name, storage_key in rows
        }

    async def reconcile(self) -> None:
        """One pass of the control loop: read the deployments, then load, rebatch, retire and unload."""
        deployed = await self._deployed()
        held = {version_id: replica.held() for version_id, replica in self.replicas.items()}
        steps = plan(
            [d.wanted for d in deployed.values()],
            held,
            time.monotonic(),
            grace_s=self.grace_s,
            retry_s=self.settings.model_load_retry_s,
        )
        for version_id in steps.load:
            await self._start_load(deployed[version_id])
        for version_id in steps.rebatch:
            self._rebatch(self.replicas[version_id], deployed[version_id].wanted.batching)
        for version_id in steps.retire:
            log.info("retiring %s: draining in %.1f s", self.replicas[version_id].labels, self.grace_s)
            await self._set_status(self.replicas[version_id], DRAINING)
        for version_id in steps.reinstate:
            await self._set_status(self.replicas[version_id], READY)
        for version_id in steps.unload:
            replica = self.replicas[version_id]
            replica.status = UNLOADING
            self._spawn(self._unload(replica), f"unload-{version_id}")

    async def _start_load(self, deployed: Deployed) -> None:
        wanted = deployed.wanted
        replica = Replica(wanted.version_id, wanted.model_id, deployed.labels, LOADING, time.monotonic())
        self.replicas[wanted.version_id] = replica
        await self._set_status(replica, LOADING)
        self._spawn(self._load(replica, deployed), f"load-{wanted.version_id}")

    async def _load(self, replica: Replica, deployed: Deployed) -> None:
        batching = deployed.wanted.batching
        log.info("loading %s (%s)", replica.labels, replica.version_id)
        try:
            model = await asyncio.to_thread(
                load_model,
                self.store,
                storage_key=deployed.storage_key,
                sha256=deployed.sha256,
                signature=deployed.signature,
                threads=self.threads,
                warmup_rows=batching.max_batch_size,
                spinning=self.settings.inference_spinning,
                crowded_session=self.settings.inference_concurrent_batches > 1,
            )
        except Exception as exc:
            log.warning("loading %s failed: %s", replica.labels, exc)
            replica.error = f"{type(exc).__name__}: {exc}"[:2000]
            await self._set_status(replica, FAILED)
            return
        replica.model, replica.error = model, None
        replica.lanes = Lanes(
            model.run, self.settings.inference_concurrent_batches, f"onnxruntime-{replica.labels.model}"
        )
        replica.batching, replica.batcher = batching, self._batcher(replica, batching)
        self.metrics.watch_queue(replica.labels, lambda: replica.batcher.queue_depth if replica.batcher else 0)
        await self._set_status(replica, READY)
        log.info("%s is ready", replica.labels)

    def _batcher(self, replica: Replica, batching: BatchingSettings) -> DynamicBatcher:
        assert replica.lanes is not None
        return DynamicBatcher(
            replica.lanes,
            max_batch_size=batching.max_batch_size,
            max_queue_delay_us=batching.max_queue_delay_us,
            max_queue_size=batching.max_queue_size,
            default_timeout_ms=batching.timeout_ms,
            max_concurrent_batches=self.settings.inference_concurrent_batches,
            observer=self.metrics.observer(replica.labels),
        )

    def _rebatch(self, replica: Replica, batching: BatchingSettings) -> None:
        """New settings: new requests go to a new batcher at once, the old one finishes its queue."""
        old = replica.batcher
        replica.batching, replica.batcher = batching, self._batcher(replica, batching)
        log.info("%s: batching settings now %s", replica.labels, batching)
        if old is not None:
            self._spawn(old.drain(), f"drain-{replica.version_id}")

    async def _unload(self, replica: Replica) -> None:
        if replica.batcher is not None:
            await replica.batcher.drain()
        if replica.lanes is not None:
            replica.lanes.shutdown()
        self.replicas.pop(replica.version_id, None)
        self.metrics.forget(replica.labels)
        try:
            async with self._db() as session:
                await session.execute(
                    delete(ModelReplica).where(
                        ModelReplica.server_id == self.id, ModelReplica.model_version_id == replica.version_id
                    )
                )
                await session.commit()
        except Exception as exc:  # the row says draining, which nothing routes to; it goes with this server's row
            log.warning("could not delete the replica row of %s: %s", replica.labels, exc)
        log.info("unloaded %s", replica.labels)

    # ------------------------------------------------------------ data plane

    async def _infer(self, request: web.Request) -> web.Response:
        version_id = request.match_info["version_id"]
        try:
            arrays, meta = unpack(await request.read())
        except WireError as exc:
            return _error(400, str(exc))
        timeout_ms = meta.get("timeout_ms")
        for _ in range(2):  # a batcher swapped for new settings refuses; its successor takes the request
            replica = self.replicas.get(version_id)
            batcher = replica.batcher if replica is not None and replica.status != UNLOADING else None
            if batcher is None:
                break
            try:
                outputs, info = await batcher.submit_with_info(arrays, timeout_ms)
            except BatcherClosed:
                continue
            except QueueFull as exc:
                return _error(503, str(exc), {"Retry-After": "1"})
            except QueueTimeout as exc:
                return _error(504, f"the request waited in the queue past its timeout: {exc}")
            except InvalidItem as exc:
                return _error(400, str(exc))
            except Exception as exc:
                log.warning("%s: model call failed: %s", replica.labels, exc)
                return _error(500, f"the model failed on this batch: {type(exc).__name__}: {exc}")
            stats = {
                "queue_ms": round(info.queue_s * 1000, 3),
                "inference_ms": round(info.run_s * 1000, 3),
                "batch_id": f"{self.id}-{info.number}",
                "batch_size": info.rows,
            }
            return web.Response(body=pack(outputs, stats), content_type=CONTENT_TYPE)
        return _error(NOT_SERVED_HERE, f"model version {version_id} is not served by {self.id}")

    async def _metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "id": self.id, "replicas": len(self.replicas)})


class Lanes:
    """The threads that run one model's batches: a batch goes to the free lane with the lowest number.

    The batcher runs up to ``count`` batches at once (one forms while another runs), each on a lane
    of its own; at low load every batch runs on lane 0, so one thread keeps the model's caches warm.
    A batch that starts while another runs is called ``crowded`` (the model then runs it on one
    thread, see ``workers.model_loader.OnnxModel``). While a replaced batcher drains next to its
    successor, a lane may take a second batch.
    """

    def __init__(self, run: Callable[[Arrays, bool], Arrays], count: int, name: str) -> None:
        self._run = run
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{lane}") for lane in range(count)]
        self._in_flight = [0] * count

    async def __call__(self, inputs: Arrays) -> Arrays:
        lane = min(range(len(self._executors)), key=self._in_flight.__getitem__)
        crowded = any(self._in_flight)
        self._in_flight[lane] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executors[lane], self._run, inputs, crowded)
        finally:
            self._in_flight[lane] -= 1

    def shutdown(self) -> None:
        for executor in self._executors:
            executor.shutdown(wait=False)


def _db_status(status: str) -> str:
    return DRAINING if status == UNLOADING else status


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )


# ---------------------------------------------------------------- in the Celery worker


class ModelServerThread(threading.Thread):
    """Runs a :class:`ModelServer` on an event loop of its own."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(name="model-server", daemon=True)
        self.settings = settings
        self.started = threading.Event()
        self.server: ModelServer | None = None
        self.error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def run(self) -> None:
        with contextlib.suppress(Exception):  # start failures are kept in self.error and logged by start_in_worker
            asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop, self._stopping = asyncio.get_running_loop(), asyncio.Event()
        server = ModelServer(self.settings, ArtifactStore(self.settings))
        try:
            await server.start()
        except BaseException as exc:
            self.error = exc
            self.started.set()
            with contextlib.suppress(Exception):
                await server.stop()
            raise
        self.server = server
        self.started.set()
        try:
            await self._stopping.wait()
        finally:
            await server.stop()

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        if self._loop is not None and self._stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                self._loop.call_soon_threadsafe(self._stopping.set)
        self.join(timeout_s)


def consumed_queues(consumer: Any) -> set[str]:
    """The queues a worker's consumer reads (``--queues``)."""
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        return {queue.name for queue in task_consumer.queues}
    return set(consumer.app.amqp.queues.consume_from or ())


_thread: ModelServerThread | None = None


@worker_ready.connect
def start_in_worker(sender: Any, **_: object) -> None:
    global _thread
    if INFERENCE_QUEUE not in consumed_queues(sender):
        return
    _thread = ModelServerThread(runtime().settings)
    _thread.start()
    _thread.started.wait(STOP_TIMEOUT_S)
    if _thread.error is not None:
        log.error("the model server did not start: %s", _thread.error)


@worker_shutdown.connect
def stop_in_worker(**_: object) -> None:
    if _thread is not None:
        _thread.stop()
