"""The model server's control loop: what it holds, against what is deployed, told to PostgreSQL.

It:

- registers the server in ``model_servers`` (where its data plane listens) and heartbeats every
  ``model_server_heartbeat_s``; the live servers delete the rows of servers silent for
  ``model_server_timeout_s`` (their replicas go with them);
- every ``model_server_poll_s`` reads the deployments, compares them with the replicas it holds
  and carries out ``serving.plan``'s :class:`ReplicaSteps`: loads deployed versions (download,
  sha256 check, ONNX Runtime session, warm-up, lanes, dynamic batcher), reports each as a
  ``model_replicas`` row (loading → ready, or failed with the reason), rebuilds a batcher whose
  deployment settings changed, retires (drains) a version that is no longer deployed once its
  successor is ready here, reinstates one deployed again, and unloads drained ones;
- on stop, drains: every ready replica is announced draining, keeps serving while the APIs
  notice, finishes what is queued; then the server's row goes.

It holds the replicas (:class:`serving.replica.LoadedReplica`) the data plane reads; it does not
answer HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.artifact_store import ArtifactStore
from core.db import async_session_factory, make_async_engine
from core.deployments import BatchingSettings, live_since
from core.models import Artifact, Deployment, Model, ModelReplica, ModelServerRecord, ModelVersion
from core.onnx_model import inference_threads, is_input_error, load_model
from core.settings import Settings
from serving.batcher import DynamicBatcher
from serving.lanes import Lanes
from serving.metrics import ModelLabels, ModelServerMetrics
from serving.plan import DRAINING, FAILED, LOADING, READY, UNLOADING, Wanted, plan
from serving.replica import LoadedReplica

log = logging.getLogger("maas.model_server")


@dataclass(frozen=True)
class Deployed:
    """A deployed version with what loading it takes."""

    wanted: Wanted
    labels: ModelLabels
    signature: dict[str, Any]
    sha256: str
    storage_key: str


class ControlLoop:
    """Registration, heartbeats and replicas of one model server (``server_id``), on the running event loop."""

    settings: Settings
    store: ArtifactStore
    server_id: str
    metrics: ModelServerMetrics
    threads: int  # ONNX Runtime intra-op threads of each model
    grace_s: float  # how long a retired replica keeps serving before it is drained
    replicas: dict[str, LoadedReplica]  # by model version id; the data plane reads it
    url: str  # where the data plane listens, as registered

    def __init__(self, settings: Settings, store: ArtifactStore, server_id: str, metrics: ModelServerMetrics) -> None:
        self.settings = settings
        self.store = store
        self.server_id = server_id
        self.metrics = metrics
        self.threads = inference_threads(settings)
        # APIs re-read their routing table this often; a retired version serves two of those periods
        self.grace_s = 2 * settings.routing_refresh_s
        self.replicas = {}
        self.url = ""
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resync = False

    # ------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Create the database engine (it connects on first use)."""
        self._engine = make_async_engine(self.settings)
        self._sessions = async_session_factory(self._engine)

    async def start(self, url: str) -> None:
        """Register as serving at ``url``, then heartbeat and follow the deployments until :meth:`stop`."""
        self.url = url
        await self._register()
        self._spawn(self._every(self.settings.model_server_heartbeat_s, self.heartbeat), "heartbeat")
        self._spawn(self._every(self.settings.model_server_poll_s, self.reconcile), "control-loop")

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
                await session.execute(delete(ModelServerRecord).where(ModelServerRecord.id == self.server_id))
                await session.commit()

    async def close(self) -> None:
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

    # ------------------------------------------------------------ registration

    async def _register(self) -> None:
        row = {"url": self.url, "hostname": socket.gethostname(), "pid": os.getpid(), "threads": self.threads}
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
        async with self._db() as session:
            beat = (
                update(ModelServerRecord).where(ModelServerRecord.id == self.server_id).values(heartbeat_at=func.now())
            )
            # an UPDATE's result is a CursorResult; Session.execute is typed as returning a plain Result
            alive = cast(CursorResult[Any], await session.execute(beat)).rowcount
            await session.execute(
                delete(ModelServerRecord).where(ModelServerRecord.heartbeat_at < live_since(self.settings))
            )
            await session.commit()
        if not alive or self._resync:
            # our row was taken for a dead server's (we stalled), or a status write failed: say it all again
            self._resync = False
            await self._register()

    def _replica_upsert(self, replica: LoadedReplica) -> Any:
        values = {"status": _db_status(replica.status), "error": replica.error, "updated_at": func.now()}
        return (
            insert(ModelReplica)
            .values(server_id=self.server_id, model_version_id=replica.version_id, **values)
            .on_conflict_do_update(index_elements=[ModelReplica.server_id, ModelReplica.model_version_id], set_=values)
        )

    async def _set_status(self, replica: LoadedReplica, status: str) -> None:
        """Change a replica's status here, and report it; a failed report is repeated by the next heartbeat."""
        replica.status, replica.since = status, time.monotonic()
        try:
            async with self._db() as session:
                await session.execute(self._replica_upsert(replica))
                await session.commit()
        except Exception as exc:
            log.warning("could not report %s as %s (the next heartbeat will): %s", replica.labels, status, exc)
            self._resync = True

    # ------------------------------------------------------------ deployments → replicas

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
        """One pass: read the deployments, then load, rebatch, retire, reinstate and unload."""
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
        replica = LoadedReplica(wanted.version_id, wanted.model_id, deployed.labels, LOADING, time.monotonic())
        self.replicas[wanted.version_id] = replica
        await self._set_status(replica, LOADING)
        self._spawn(self._load(replica, deployed), f"load-{wanted.version_id}")

    async def _load(self, replica: LoadedReplica, deployed: Deployed) -> None:
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

    async def _unload(self, replica: LoadedReplica) -> None:
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
                        ModelReplica.server_id == self.server_id, ModelReplica.model_version_id == replica.version_id
                    )
                )
                await session.commit()
        except Exception as exc:  # the row says draining, which nothing routes to; it goes with this server's row
            log.warning("could not delete the replica row of %s: %s", replica.labels, exc)
        log.info("unloaded %s", replica.labels)


def _db_status(status: str) -> str:
    return DRAINING if status == UNLOADING else status
