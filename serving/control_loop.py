"""The model server's control loop: what it holds, against what the placer assigned it, told to PostgreSQL.

It:

- registers the server in ``model_servers`` (where its data plane listens, its memory budget and its
  GPU budget: 0 without a CUDA provider, ``serving.memory``) and
  heartbeats every ``model_server_heartbeat_s`` with the memory its replicas hold and, per replica,
  the requests in flight and when the last one came (the placer's autoscaler and idle timeout read
  them); the live servers delete the rows of servers silent for ``model_server_timeout_s`` (their
  replicas go with them);
- reads the replicas assigned to it (``model_replicas`` rows the placer, ``serving.placer``, wrote
  with status ``assigned``) when the placer notifies it (``ASSIGNMENTS_CHANNEL``), and at least every
  ``model_server_poll_s``, and carries out ``serving.plan``'s :class:`ReplicaSteps`: loads them
  (through the local artifact cache, sha256 checked; ONNX Runtime session, warm-up, lanes,
  dynamic batcher; the resident memory it took, and on a server with a GPU budget the GPU memory,
  is measured and stored for the next placement; the
  single-threaded twin session is opened once the replica is ready, off the cold start's path),
  reports each state (loading → ready, or failed with the reason) with a ``REPLICAS_CHANNEL``
  notice in the same transaction, rebuilds a batcher whose deployment settings changed, retires
  (drains) a replica the placer evicted or whose model is no longer deployed (after a version
  switch, once its successor is ready here), and unloads drained ones;
- on stop, drains: every ready replica is announced draining, keeps serving while the APIs
  notice, finishes what is queued; then the server's row goes.

It holds the replicas (:class:`serving.replica.LoadedReplica`) the data plane reads; it does not
answer HTTP, and it does not decide where replicas go (the placer does).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import gc
import logging
import os
import socket
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import onnxruntime as ort
import psycopg
from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.artifact_store import ArtifactStore
from core.db import async_session_factory, libpq_url, make_async_engine
from core.deployments import BatchingSettings, live_since
from core.models import Artifact, Deployment, Model, ModelReplica, ModelServerRecord, ModelVersion, ServingEvent
from core.onnx_model import (
    ModelFiles,
    OnnxModel,
    inference_providers,
    inference_threads,
    is_input_error,
    load_model,
    session_options,
    warmup_inputs,
)
from core.serving_signals import ASSIGNMENTS_CHANNEL, REPLICAS_CHANNEL, notification
from core.settings import Settings
from serving.artifact_cache import ArtifactCache
from serving.batcher import DynamicBatcher
from serving.lanes import Lanes
from serving.memory import (
    gpu_memory_budget,
    gpu_used_bytes,
    memory_budget,
    resident_bytes,
    return_freed_memory,
    sessions_per_replica,
    start_onnxruntime,
)
from serving.metrics import ModelLabels, ModelServerMetrics
from serving.placement import evict_kind
from serving.placer import Placer
from serving.plan import DRAINING, FAILED, LOADING, READY, UNLOADING, Wanted, plan
from serving.replica import LoadedReplica

log = logging.getLogger("maas.model_server")

LISTEN_RETRY_S = 1.0
UNDEPLOYED = "undeployed: the model's deployment is gone"


@dataclass(frozen=True)
class Assigned:
    """A replica the placer assigned to this server, with what loading it takes."""

    wanted: Wanted
    labels: ModelLabels
    signature: dict[str, Any]
    sha256: str
    storage_key: str
    artifact_bytes: int
    known_memory: int  # the most an earlier load of the version measured (0: never loaded)
    known_gpu_memory: int  # the same on a GPU (0: never loaded on one)
    reserved_memory: int  # what the placer counted for the replica when it assigned it
    reason: str  # the placer's last event about it (why it was assigned), for the load metric


class ControlLoop:
    """Registration, heartbeats and replicas of one model server (``server_id``), on the running event loop."""

    settings: Settings
    store: ArtifactStore
    cache: ArtifactCache
    server_id: str
    metrics: ModelServerMetrics
    threads: int  # ONNX Runtime intra-op threads of each model
    providers: list[str]  # ONNX Runtime execution providers
    budget_bytes: int  # what the placer may fill here
    gpu_budget_bytes: int  # what it may fill on this server's GPU (0: no GPU: nothing runs nvidia-smi)
    grace_s: float  # how long a retired replica keeps serving before it is drained
    replicas: dict[str, LoadedReplica]  # by model version id; the data plane reads it
    evicted: dict[str, str]  # version id → why the placer evicted it (for the unload's event and metric)
    url: str  # where the data plane listens, as registered
    placer: Placer | None  # decides where every server's replicas go, while this server holds the placer lock

    def __init__(self, settings: Settings, store: ArtifactStore, server_id: str, metrics: ModelServerMetrics) -> None:
        self.settings = settings
        self.store = store
        self.cache = ArtifactCache(store, settings.model_cache_path, settings.model_cache_bytes)
        self.server_id = server_id
        self.metrics = metrics
        self.threads = inference_threads(settings)
        self.providers = inference_providers(settings)
        self.budget_bytes = memory_budget(settings)
        self.gpu_budget_bytes = gpu_memory_budget(settings, self.providers)
        # APIs re-read their routing table this often (and at once on a REPLICAS_CHANNEL notice); a retired
        # version serves two of those periods
        self.grace_s = 2 * settings.routing_refresh_s
        self.replicas = {}
        self.evicted = {}
        self.url = ""
        self.placer = None
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resync = False
        self._wake = asyncio.Event()
        self._checks = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="sha256")
        # one load, twin session or release at a time moves the resident set, so that each measure is its
        # own: two loads measured at once each counted the other's memory (a server looked twice as full)
        self._memory_moves = threading.Lock()

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the database engine (it connects on first use)."""
        self._engine = make_async_engine(self.settings)
        self._sessions = async_session_factory(self._engine)

    async def start(self, url: str) -> None:
        """Register as serving at ``url``, then heartbeat and follow the assignments until :meth:`stop`."""
        self.url = url
        await asyncio.to_thread(start_onnxruntime, self.threads, self.providers)
        await self._register()
        self._spawn(self._every(self.settings.model_server_heartbeat_s, self.heartbeat), "heartbeat")
        self._spawn(self._listen(), "assignments")
        self._spawn(self._follow(), "control-loop")
        assert self._sessions is not None
        self.placer = Placer(self.settings, self.server_id, self._sessions)
        self._spawn(self.placer.run(), "placer")  # it leads, or waits to take over

    async def stop(self) -> None:
        """Stop taking new work gracefully: announce draining, let APIs notice, finish what is queued, leave."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):  # the placer puts nothing more here
            async with self._db() as session:
                await session.execute(
                    update(ModelServerRecord)
                    .where(ModelServerRecord.id == self.server_id)
                    .values(memory_budget_bytes=0)
                )
                await session.commit()
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
                await session.execute(delete(ModelServerRecord).where(ModelServerRecord.id == self.server_id))
                for version_id in self.replicas:
                    await session.execute(notification(REPLICAS_CHANNEL, version_id))
                await session.commit()

    async def close(self) -> None:
        self._checks.shutdown(wait=False)
        if self._engine is not None:
            await self._engine.dispose()

    def _db(self) -> AsyncSession:
        """A new database session, from the engine :meth:`open` created."""
        if self._sessions is None:
            raise RuntimeError("the control loop's database is not open: call open() first")
        return self._sessions()

    def _spawn(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _every(self, interval_s: float, step: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await step()
            except Exception:
                log.exception("model server %s: %s failed; trying again", self.server_id, step.__name__)
            await asyncio.sleep(interval_s)

    async def _follow(self) -> None:
        """Reconcile when the placer says so, and at least every ``model_server_poll_s``."""
        while True:
            self._wake.clear()
            try:
                await self.reconcile()
            except Exception:
                log.exception("model server %s: reconcile failed; trying again", self.server_id)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.model_server_poll_s)

    async def _listen(self) -> None:
        """LISTEN for the placer's notices to this server; a lost connection only slows us to the poll."""
        url = libpq_url(self.settings.service("database_url"))
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {ASSIGNMENTS_CHANNEL}")
                    self._wake.set()  # what was sent before we listened
                    async for notice in conn.notifies():
                        if notice.payload == self.server_id:
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("model server %s: cannot listen for assignments (polling): %s", self.server_id, exc)
            await asyncio.sleep(LISTEN_RETRY_S)

    # ------------------------------------------------------------ registration

    async def _register(self) -> None:
        row = {
            "url": self.url,
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "threads": self.threads,
            "memory_budget_bytes": self.budget_bytes,
            "gpu_memory_budget_bytes": self.gpu_budget_bytes,
        }
        async with self._db() as session:
            await session.execute(
                insert(ModelServerRecord)
                .values(id=self.server_id, **row)
                .on_conflict_do_update(index_elements=[ModelServerRecord.id], set_={"heartbeat_at": func.now()})
            )
            for replica in self.replicas.values():
                await session.execute(self._replica_upsert(replica))
            await session.commit()

    async def heartbeat(self) -> None:
        held, gpu_held = self.memory_held(), self.memory_held(gpu=True)
        async with self._db() as session:
            beat = (
                update(ModelServerRecord)
                .where(ModelServerRecord.id == self.server_id)
                .values(heartbeat_at=func.now(), memory_used_bytes=held, gpu_memory_used_bytes=gpu_held)
            )
            # an UPDATE's result is a CursorResult; Session.execute is typed as returning a plain Result
            alive = cast(CursorResult[Any], await session.execute(beat)).rowcount
            await self._report_use(session)
            await session.execute(
                delete(ModelServerRecord).where(ModelServerRecord.heartbeat_at < live_since(self.settings))
            )
            await session.commit()
        holdings = ((r.labels, r.status) for r in self.replicas.values())
        self.metrics.show_holdings(holdings, held, self.budget_bytes, gpu_held, self.gpu_budget_bytes)
        if not alive or self._resync:
            # our row was taken for a dead server's (we stalled), or a status write failed: say it all again
            self._resync = False
            await self._register()

    def memory_held(self, gpu: bool = False) -> int:
        """Bytes the replicas held here take (measured at load) in memory, or on the GPU, failed ones aside."""
        return sum(
            (r.gpu_memory_bytes if gpu else r.memory_bytes) or 0 for r in self.replicas.values() if r.status != FAILED
        )

    async def _report_use(self, session: AsyncSession) -> None:
        """Mean requests in flight since the last heartbeat (at least 1 while one is) and the last request's
        time, per replica, where they changed."""
        now = time.monotonic()
        for replica in self.replicas.values():
            if replica.status not in (READY, DRAINING):
                continue
            load = max(round(replica.mean_in_flight(now)), 1 if replica.in_flight else 0)
            use = (load, replica.last_used)
            if use == replica.reported:
                continue
            values: dict[str, Any] = {"in_flight": load}
            if replica.last_used:
                values["last_used_at"] = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, now - replica.last_used)
            await session.execute(
                update(ModelReplica)
                .where(ModelReplica.server_id == self.server_id, ModelReplica.model_version_id == replica.version_id)
                .values(**values)
            )
            replica.reported = use

    def _replica_upsert(self, replica: LoadedReplica) -> Any:
        values: dict[str, Any] = {
            "status": _db_status(replica.status),
            "error": replica.error,
            "updated_at": func.now(),
        }
        if replica.memory_bytes is not None:
            values["memory_bytes"] = replica.memory_bytes
        if replica.gpu_memory_bytes is not None:
            values["gpu_memory_bytes"] = replica.gpu_memory_bytes
        if replica.status == READY:
            values["last_used_at"] = func.now()  # idle time counts from when it became ready
        return (
            insert(ModelReplica)
            .values(server_id=self.server_id, model_version_id=replica.version_id, **values)
            .on_conflict_do_update(index_elements=[ModelReplica.server_id, ModelReplica.model_version_id], set_=values)
        )

    async def _set_status(self, replica: LoadedReplica, status: str, event: tuple[str, str] | None = None) -> None:
        """Change a replica's status here, and report it (with a notice to the APIs, and ``event``: action,
        reason); a failed report is repeated by the next heartbeat."""
        replica.status, replica.since = status, time.monotonic()
        try:
            async with self._db() as session:
                await session.execute(self._replica_upsert(replica))
                if event is not None:
                    session.add(self._event(replica, *event))
                await session.execute(notification(REPLICAS_CHANNEL, replica.version_id))
                await session.commit()
        except Exception as exc:
            log.warning("could not report %s as %s (the next heartbeat will): %s", replica.labels, status, exc)
            self._resync = True

    def _event(self, replica: LoadedReplica, action: str, reason: str) -> ServingEvent:
        return ServingEvent(
            model_id=replica.model_id,
            model_version_id=replica.version_id,
            server_id=self.server_id,
            action=action,
            reason=reason,
        )

    # ------------------------------------------------------------ assignments → replicas

    async def _assigned(self) -> tuple[dict[str, Assigned], dict[str, str]]:
        """The replicas the placer wants here (by version id), and the evicted ones with the reason."""
        statement = (
            select(ModelReplica, ModelVersion, Deployment, Model.tenant_id, Model.name, Artifact)
            .join(ModelVersion, ModelVersion.id == ModelReplica.model_version_id)
            .join(Model, Model.id == ModelVersion.model_id)
            .join(Artifact, Artifact.id == ModelVersion.artifact_id)
            .outerjoin(Deployment, Deployment.model_id == Model.id)
            .where(ModelReplica.server_id == self.server_id)
        )
        async with self._db() as session:
            rows = (await session.execute(statement)).all()
        assigned, evicted = {}, {}
        for replica, version, deployment, tenant_id, name, artifact in rows:
            if deployment is None:  # an undeployed model's replicas are wanted nowhere
                evicted[version.id] = UNDEPLOYED
                continue
            if replica.evict_reason is not None:
                evicted[version.id] = replica.evict_reason
                continue
            assigned[version.id] = Assigned(
                wanted=Wanted(version.id, version.model_id, BatchingSettings.of(deployment)),
                labels=ModelLabels(tenant_id, name, str(version.version)),
                signature=version.signature,
                sha256=version.sha256,
                storage_key=artifact.storage_key,
                artifact_bytes=artifact.bytes,
                known_memory=version.memory_bytes or 0,
                known_gpu_memory=version.gpu_memory_bytes or 0,
                reserved_memory=replica.memory_bytes or 0,
                reason="retry" if replica.status == FAILED else "assign",
            )
        return assigned, evicted

    async def reconcile(self) -> None:
        """One pass: read the assignments, then load, rebatch, retire, reinstate and unload."""
        assigned, self.evicted = await self._assigned()
        held = {version_id: replica.held() for version_id, replica in self.replicas.items()}
        steps = plan(
            [a.wanted for a in assigned.values()],
            held,
            time.monotonic(),
            grace_s=self.grace_s,
            retry_s=self.settings.model_load_retry_s,
        )
        for version_id in steps.load:
            await self._start_load(assigned[version_id])
        for version_id in steps.rebatch:
            self._rebatch(self.replicas[version_id], assigned[version_id].wanted.batching)
        for version_id in steps.retire:
            replica = self.replicas[version_id]
            log.info("retiring %s (%s): draining in %.1f s", replica.labels, self._why_gone(version_id), self.grace_s)
            await self._set_status(replica, DRAINING)
        for version_id in steps.reinstate:
            await self._set_status(self.replicas[version_id], READY)
        for version_id in steps.unload:
            replica = self.replicas[version_id]
            replica.status = UNLOADING
            self._spawn(self._unload(replica, self._why_gone(version_id)), f"unload-{version_id}")
        never_loaded = [version_id for version_id in self.evicted if version_id not in self.replicas]
        if never_loaded:  # evicted or undeployed before this server loaded them: only their rows to drop
            await self._drop_rows(never_loaded)

    async def _drop_rows(self, version_ids: list[str]) -> None:
        async with self._db() as session:
            await session.execute(
                delete(ModelReplica).where(
                    ModelReplica.server_id == self.server_id,
                    ModelReplica.model_version_id.in_(version_ids),
                )
            )
            for version_id in version_ids:
                await session.execute(notification(REPLICAS_CHANNEL, version_id))
            await session.commit()

    def _why_gone(self, version_id: str) -> str:
        replica = self.replicas.get(version_id)
        if replica is not None and replica.status == FAILED:
            return "failed: the load failed and the replica is no longer wanted"
        return self.evicted.get(version_id) or UNDEPLOYED

    async def _start_load(self, assigned: Assigned) -> None:
        wanted = assigned.wanted
        replica = LoadedReplica(wanted.version_id, wanted.model_id, assigned.labels, LOADING, time.monotonic())
        self.replicas[wanted.version_id] = replica
        await self._set_status(replica, LOADING)
        self._spawn(self._load(replica, assigned), f"load-{wanted.version_id}")

    async def _load(self, replica: LoadedReplica, assigned: Assigned) -> None:
        batching = assigned.wanted.batching
        cached = self.cache.holds(assigned.sha256)
        log.info("loading %s (%s)%s", replica.labels, replica.version_id, " from the local cache" if cached else "")
        timings: dict[str, float] = {}
        started = time.perf_counter()
        try:
            model, memory, gpu_memory = await asyncio.to_thread(self._load_measured, assigned, batching, timings)
        except Exception as exc:
            log.warning("loading %s failed: %s", replica.labels, exc)
            replica.error = f"{type(exc).__name__}: {exc}"[:2000]
            self.metrics.loads.labels(assigned.reason, "failed").inc()
            await self._set_status(replica, FAILED, ("load_failed", replica.error))
            return
        took = time.perf_counter() - started
        # the resident set's growth, but never less than the weights once per session it will hold
        sessions = sessions_per_replica(self.settings)
        replica.model, replica.error = model, None
        # and never less than an earlier load measured: the placer reserves that much for the version, and a
        # measure that varies by load must not make a server look emptier than it is; until the twin session
        # is open and measured too, not less than the placer reserved (the room must not be given away meanwhile)
        measured = max(memory, assigned.artifact_bytes * sessions, assigned.known_memory)
        replica.memory_bytes = max(measured, assigned.reserved_memory) if self._twin_wanted else measured
        # the same on a GPU, where the CUDA provider puts the weights (0 without a GPU budget: none is counted)
        gpu_floor = max(gpu_memory, assigned.artifact_bytes * sessions, assigned.known_gpu_memory)
        replica.gpu_memory_bytes = gpu_floor if self.gpu_budget_bytes else 0
        replica.lanes = Lanes(
            model.run, self.settings.inference_concurrent_batches, f"onnxruntime-{replica.labels.model}"
        )
        replica.batching, replica.batcher = batching, self._batcher(replica, batching)
        self.metrics.watch_queue(replica.labels, lambda: replica.batcher.queue_depth if replica.batcher else 0)
        self.metrics.loads.labels(assigned.reason, "ok").inc()
        for step, seconds in timings.items():
            self.metrics.load_seconds.labels(step).observe(seconds)
        steps = ", ".join(f"{step} {seconds:.3f} s" for step, seconds in timings.items())
        source = "local cache" if cached else "S3"
        reason = f"loaded in {took:.3f} s ({steps}; from {source}); holds {replica.memory_bytes / (1 << 20):.1f} MiB"
        if replica.gpu_memory_bytes:
            reason += f" and {replica.gpu_memory_bytes / (1 << 20):.1f} MiB of GPU memory"
        await self._remember_memory(replica, measured)
        await self._set_status(replica, READY, ("loaded", reason))
        log.info("%s is ready: %s", replica.labels, reason)
        if self._twin_wanted:
            self._spawn(self._open_twin(replica, assigned, memory), f"twin-{replica.version_id}")

    @property
    def _twin_wanted(self) -> bool:
        """Whether models get the single-threaded twin session (``core.onnx_model.OnnxModel``)."""
        return sessions_per_replica(self.settings) == 2

    async def _open_twin(self, replica: LoadedReplica, assigned: Assigned, main_bytes: int) -> None:
        """Open and warm the twin session of a ready replica; until then, every batch uses the main one. Then
        the replica holds what the two sessions measured (not less than the weights twice, nor than an earlier
        load measured), instead of the placer's reservation."""
        try:
            twin_bytes = await asyncio.to_thread(self._twin, replica, assigned)
        except Exception as exc:  # the replica serves without it
            log.warning("%s: the single-threaded twin session did not open: %s", replica.labels, exc)
            twin_bytes = 0
        if replica.status not in (READY, DRAINING):
            return
        replica.memory_bytes = max(main_bytes + twin_bytes, assigned.artifact_bytes * 2, assigned.known_memory)
        await self._remember_memory(replica, replica.memory_bytes)
        log.info("%s holds %.1f MiB with its twin session", replica.labels, replica.memory_bytes / (1 << 20))

    def _twin(self, replica: LoadedReplica, assigned: Assigned) -> int:
        """Open the twin session (in this thread); the resident memory it added."""
        model = replica.model
        if model is None:
            return 0
        with tempfile.TemporaryDirectory(prefix="maas-twin-") as folder:
            path = Path(folder) / "model.onnx"
            self.cache.download_file(assigned.storage_key, path, expected_sha256=assigned.sha256)
            with self._memory_moves:
                return_freed_memory()
                before = resident_bytes()
                twin = ort.InferenceSession(str(path), sess_options=session_options(1), providers=self.providers)
                rows = assigned.wanted.batching.max_batch_size
                twinned = dataclasses.replace(model, session=twin, crowded_session=None)
                twinned.run(warmup_inputs(assigned.signature, rows))
                added = max(0, resident_bytes() - before)
        if replica.status in (READY, DRAINING):
            model.crowded_session = twin
        return added

    def _load_measured(self, assigned: Assigned, batching: BatchingSettings, timings: dict[str, float]) -> Any:
        """Load in this thread; the model, and the resident and GPU memory it added (measured while no other
        load, twin or release moves them; GPU memory only on a server with a GPU budget, else 0).

        A file the local cache holds is opened at once while another thread checks its sha256 (the
        check costs ~0.1 s for MiniLM, a third of its session); what was made of a file that fails
        the check is thrown away and the file fetched again.
        """
        started = time.perf_counter()
        checked: concurrent.futures.Future[bool] | None = None
        if self.cache.holds(assigned.sha256):
            checked = self._checks.submit(self.cache.verify, assigned.sha256)
            source: ModelFiles = _CachedUnchecked(self.cache)
        else:
            if self.cache.enabled:  # the download outside the measure: its buffers are not the model's
                self.cache.fetch(assigned.storage_key, assigned.sha256)
            source = self.cache
        fetched = time.perf_counter() - started
        with self._memory_moves:
            return_freed_memory()  # what the allocator kept would be reused, and the load would look smaller
            before, before_gpu = resident_bytes(), self._gpu_used()
            model = self._open(source, assigned, batching, timings)
            if checked is not None and not checked.result():
                model = self._open(self.cache, assigned, batching, timings)  # fetched from S3 again, checked
            memory, gpu_memory = max(0, resident_bytes() - before), max(0, self._gpu_used() - before_gpu)
        timings["download"] += fetched
        return model, memory, gpu_memory

    def _gpu_used(self) -> int:
        return gpu_used_bytes() if self.gpu_budget_bytes else 0

    def _open(
        self, source: ModelFiles, assigned: Assigned, batching: BatchingSettings, timings: dict[str, float]
    ) -> OnnxModel:
        return load_model(
            source,
            storage_key=assigned.storage_key,
            sha256=assigned.sha256,
            signature=assigned.signature,
            threads=self.threads,
            warmup_rows=batching.max_batch_size,
            spinning=self.settings.inference_spinning,
            crowded_session=False,  # opened after the replica is ready (_open_twin): not on the cold start's path
            providers=self.providers,
            timings=timings,
        )

    async def _remember_memory(self, replica: LoadedReplica, measured: int) -> None:
        """Store the most the version took (``measured`` by this load, or an earlier one), for its next placement
        anywhere; GPU memory too, on a server with a GPU. The replica's row says what it holds now (the placer
        counts it)."""
        with contextlib.suppress(Exception):
            async with self._db() as session:
                most = func.greatest(func.coalesce(ModelVersion.memory_bytes, 0), measured)
                values = {"memory_bytes": most}
                if replica.gpu_memory_bytes:
                    most_gpu = func.greatest(func.coalesce(ModelVersion.gpu_memory_bytes, 0), replica.gpu_memory_bytes)
                    values["gpu_memory_bytes"] = most_gpu
                await session.execute(update(ModelVersion).where(ModelVersion.id == replica.version_id).values(values))
                mine = (ModelReplica.server_id == self.server_id, ModelReplica.model_version_id == replica.version_id)
                await session.execute(update(ModelReplica).where(*mine).values(memory_bytes=replica.memory_bytes))
                await session.commit()

    def _batcher(self, replica: LoadedReplica, batching: BatchingSettings) -> DynamicBatcher:
        assert replica.lanes is not None
        return DynamicBatcher(
            replica.lanes,
            max_batch_size=batching.max_batch_size,
            max_queue_delay_us=batching.max_queue_delay_us,
            max_queue_size=batching.max_queue_size,
            default_timeout_ms=batching.timeout_ms,
            max_concurrent_batches=self.settings.inference_concurrent_batches,
            observer=self.metrics.observer(replica.labels),
            input_error=is_input_error,
        )

    def _rebatch(self, replica: LoadedReplica, batching: BatchingSettings) -> None:
        """New settings: new requests go to a new batcher at once, the old one finishes its queue."""
        old = replica.batcher
        replica.batching, replica.batcher = batching, self._batcher(replica, batching)
        log.info("%s: batching settings now %s", replica.labels, batching)
        if old is not None:
            self._spawn(old.drain(), f"drain-{replica.version_id}")

    async def _unload(self, replica: LoadedReplica, why: str) -> None:
        if replica.batcher is not None:
            await replica.batcher.drain()
        if replica.lanes is not None:
            replica.lanes.shutdown()
        self.replicas.pop(replica.version_id, None)
        await asyncio.to_thread(self._release, replica)
        self.metrics.forget(replica.labels)
        self.metrics.unloads.labels(evict_kind(why)).inc()
        try:
            async with self._db() as session:
                await session.execute(
                    delete(ModelReplica).where(
                        ModelReplica.server_id == self.server_id, ModelReplica.model_version_id == replica.version_id
                    )
                )
                session.add(self._event(replica, "unloaded", why))
                await session.execute(notification(REPLICAS_CHANNEL, replica.version_id))
                await session.commit()
        except Exception as exc:  # the row says draining, which nothing routes to; it goes with this server's row
            log.warning("could not delete the replica row of %s: %s", replica.labels, exc)
        log.info("unloaded %s (%s)", replica.labels, why)

    def _release(self, replica: LoadedReplica) -> None:
        """Free an unloaded replica's sessions now, not while another load is being measured."""
        with self._memory_moves:
            replica.model = replica.batcher = replica.lanes = None
            gc.collect()
            return_freed_memory()


class _CachedUnchecked:
    """``ModelFiles`` from the local cache, not checked (the caller checks it meanwhile)."""

    def __init__(self, cache: ArtifactCache) -> None:
        self.cache = cache

    def download_file(self, key: str, path: Path, expected_sha256: str | None = None) -> object:
        if expected_sha256 is None or not self.cache.link_unchecked(expected_sha256, path):
            return self.cache.download_file(key, path, expected_sha256=expected_sha256)
        return True


def _db_status(status: str) -> str:
    return DRAINING if status == UNLOADING else status
