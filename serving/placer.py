"""The placer: the one control loop that decides where replicas go, run by one model server at a time.

Every model server runs a :class:`Placer`; the one that holds a PostgreSQL advisory lock
(``PLACER_LOCK``, on a connection of its own) is the leader, the others retry every
``model_server_heartbeat_s`` and take over when the leader's connection goes (it stopped, or died).
A leader whose server is dead (no live ``model_servers`` row: silent for ``model_server_timeout_s``)
while its connection stays open (the process stalled, or its host was cut off: PostgreSQL would
keep the lock until TCP keepalives notice, hours later) is deposed by the others: they terminate
that connection, which they find by its ``application_name``. A pass commits only while its
placer still holds the lock, so a deposed leader that wakes up writes nothing.
The leader LISTENs on ``DEMAND_CHANNEL`` (a request waits: act now, not at the next poll) and
``REPLICAS_CHANNEL`` (a replica became ready, or went: a demand is met, memory is free), and
passes at least every ``model_server_poll_s`` (idle timeouts, the autoscaler's delays).

A pass reads the live servers, their replicas and the deployments (one transaction), asks
``serving.placement.place`` what to do, and writes it (one transaction): ``assigned`` replica rows
(the chosen server loads them, woken by ``ASSIGNMENTS_CHANNEL``), ``evict_reason`` on replicas that
go (their server drains and unloads them), ``placement_error`` on deployments that fit nowhere,
``demand_at`` cleared once a replica is ready, and a ``serving_events`` row for each decision
(kept for ``EVENTS_KEPT``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

import psycopg
from sqlalchemy import Float, cast, delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import libpq_url
from core.deployments import ScalingSettings, live_since
from core.models import Artifact, Deployment, Model, ModelReplica, ModelServerRecord, ModelVersion, ServingEvent
from core.serving_signals import ASSIGNMENTS_CHANNEL, DEMAND_CHANNEL, REPLICAS_CHANNEL, notification
from core.settings import Settings
from serving.memory import sessions_per_replica
from serving.placement import (
    READY,
    Decisions,
    DeploymentView,
    ReplicaView,
    ServerView,
    Trend,
    autoscale_signal,
    estimated_memory,
    observe,
    place,
)

log = logging.getLogger("maas.placer")

PLACER_LOCK = 0x6D616173_706C6163  # "maasplac": the advisory lock whose holder places replicas
# the backend that holds it in this database (a bigint lock shows as classid: high 32 bits, objid: low 32 bits)
LOCK_HOLDER = (
    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    f" AND classid = {PLACER_LOCK >> 32} AND objid = {PLACER_LOCK & 0xFFFFFFFF}"
)
APPLICATION = "maas placer "  # the application_name of a placer's connection, before its server's id
EVENTS_KEPT = timedelta(days=7)  # serving events older than this are deleted
PRUNE_EVERY_S = 600.0


class Deposed(Exception):
    """The placer's lock was taken from it (its server was found dead) during a pass."""


class Placer:
    settings: Settings
    server_id: str  # the model server this placer runs in
    leader: bool
    trends: dict[str, Trend]  # the autoscaler's memory, by model id (the leader's only)

    def __init__(self, settings: Settings, server_id: str, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.settings = settings
        self.server_id = server_id
        self._sessions = sessions
        self.leader = False
        self.trends = {}
        self._wake = asyncio.Event()
        self._pruned = 0.0
        self._lock_pid: int | None = None  # the backend of the connection that holds the lock, while leading

    async def run(self) -> None:
        """Try to lead, forever; while leading, pass on every notice and every poll period."""
        url = libpq_url(self.settings.service("database_url"))
        while True:
            try:
                name = APPLICATION + self.server_id
                async with await psycopg.AsyncConnection.connect(url, autocommit=True, application_name=name) as conn:
                    while not await self._lock(conn):
                        await self._depose_dead_leader(conn)
                        await asyncio.sleep(self.settings.model_server_heartbeat_s)
                    self._lock_pid = conn.info.backend_pid
                    await conn.execute(f"LISTEN {DEMAND_CHANNEL}")
                    await conn.execute(f"LISTEN {REPLICAS_CHANNEL}")
                    self.leader, self.trends = True, {}
                    log.info("model server %s places replicas now (it holds the placer lock)", self.server_id)
                    listening = asyncio.get_running_loop().create_task(self._listen(conn))
                    try:
                        await self._lead(listening)
                    finally:
                        listening.cancel()
                        with contextlib.suppress(BaseException):
                            await listening
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("placer of %s: %s; trying again", self.server_id, exc)
            finally:
                self.leader, self._lock_pid = False, None
            await asyncio.sleep(self.settings.model_server_heartbeat_s)

    async def _lock(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        row = await (await conn.execute("SELECT pg_try_advisory_lock(%s)", (PLACER_LOCK,))).fetchone()
        return bool(row and row[0])

    async def _depose_dead_leader(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Terminate the lock's connection when the server it places for is dead (the lock is free at the next try).

        Only a connection older than ``model_server_timeout_s``: a server back from a stall may take the
        lock before its next heartbeat has registered it again."""
        timeout = self.settings.model_server_timeout_s
        server = f"substr(a.application_name, {len(APPLICATION) + 1})"
        deposed = await (
            await conn.execute(
                f"SELECT {server}, pg_terminate_backend(a.pid) FROM pg_stat_activity a WHERE a.pid IN ({LOCK_HOLDER})"
                " AND starts_with(a.application_name, %(prefix)s)"
                " AND a.backend_start < now() - make_interval(secs => %(timeout)s)"
                f" AND NOT EXISTS (SELECT 1 FROM {ModelServerRecord.__tablename__} s WHERE s.id = {server}"
                " AND s.heartbeat_at > now() - make_interval(secs => %(timeout)s))",
                {"prefix": APPLICATION, "timeout": timeout},
            )
        ).fetchone()
        if deposed:
            log.warning("deposed the placer of %s: its server has been silent over %s s", deposed[0], timeout)

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for _ in conn.notifies():
            self._wake.set()

    async def _lead(self, listening: asyncio.Task[None]) -> None:
        while not listening.done():
            self._wake.clear()
            try:
                await self.place_once()
            except Deposed:
                raise
            except Exception:
                log.exception("placer pass failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.model_server_poll_s)
        listening.result()  # the connection's error, if it ended with one

    async def place_once(self) -> Decisions:
        """One pass: read, decide, write."""
        async with self._sessions() as session:
            servers, replicas, deployments = await self._read(session)
            decisions = place(servers, replicas, deployments)
            await self._write(session, decisions, {d.model_id: d for d in deployments})
            if time.monotonic() - self._pruned >= PRUNE_EVERY_S:
                await session.execute(delete(ServingEvent).where(ServingEvent.created_at < func.now() - EVENTS_KEPT))
                self._pruned = time.monotonic()
            if (await session.execute(text(LOCK_HOLDER))).scalar() != self._lock_pid:
                raise Deposed(f"{self.server_id} no longer holds the placer lock; this pass is not written")
            await session.commit()
        return decisions

    async def _read(self, session: AsyncSession) -> tuple[list[ServerView], list[ReplicaView], list[DeploymentView]]:
        live = ModelServerRecord.heartbeat_at > live_since(self.settings)
        budgets = select(
            ModelServerRecord.id, ModelServerRecord.memory_budget_bytes, ModelServerRecord.gpu_memory_budget_bytes
        )
        servers = [
            ServerView(id, budget, gpu) for id, budget, gpu in (await session.execute(budgets.where(live))).all()
        ]
        factor = self.settings.model_memory_factor
        idle_s = cast(
            func.extract("epoch", func.now() - func.coalesce(ModelReplica.last_used_at, ModelReplica.updated_at)),
            Float,
        )
        rows = (
            await session.execute(
                select(
                    ModelReplica,
                    ModelVersion.model_id,
                    ModelVersion.memory_bytes,
                    ModelVersion.gpu_memory_bytes,
                    Artifact.bytes,
                    idle_s,
                    ModelServerRecord.gpu_memory_budget_bytes,
                )
                .join(ModelVersion, ModelVersion.id == ModelReplica.model_version_id)
                .join(Artifact, Artifact.id == ModelVersion.artifact_id)
                .join(ModelServerRecord, ModelServerRecord.id == ModelReplica.server_id)
                .where(live)
            )
        ).all()
        replicas = [
            ReplicaView(
                server_id=r.server_id,
                version_id=r.model_version_id,
                model_id=model_id,
                status=r.status,
                memory_bytes=r.memory_bytes or estimated_memory(measured, size, factor),
                idle_s=max(0.0, idle or 0.0),
                in_flight=r.in_flight,
                evicting=r.evict_reason is not None,
                # a row assigned before its server had a GPU budget, or before GPU memory was counted: estimated
                gpu_memory_bytes=r.gpu_memory_bytes or (estimated_memory(gpu, size, factor) if gpu_budget else 0),
            )
            for r, model_id, measured, gpu, size, idle, gpu_budget in rows
        ]
        now = time.monotonic()
        load: dict[str, list[ReplicaView]] = defaultdict(list)
        for replica in replicas:
            if replica.status == READY and not replica.evicting:
                load[replica.version_id].append(replica)
        deployments = []
        for deployment, name, measured, gpu, size in (
            await session.execute(
                select(Deployment, Model.name, ModelVersion.memory_bytes, ModelVersion.gpu_memory_bytes, Artifact.bytes)
                .join(Model, Model.id == Deployment.model_id)
                .join(ModelVersion, ModelVersion.id == Deployment.model_version_id)
                .join(Artifact, Artifact.id == ModelVersion.artifact_id)
            )
        ).all():
            scaling = ScalingSettings.of(deployment)
            ready = load[deployment.model_version_id]
            trend = observe(
                self.trends.get(deployment.model_id, Trend()),
                sum(r.in_flight for r in ready),
                len(ready),
                scaling.target_concurrency,
                now,
            )
            self.trends[deployment.model_id] = trend
            deployments.append(
                DeploymentView(
                    model_id=deployment.model_id,
                    version_id=deployment.model_version_id,
                    name=name,
                    scaling=scaling,
                    memory_bytes=estimated_memory(measured, size, factor),
                    least_memory_bytes=measured or size * sessions_per_replica(self.settings),
                    demand=deployment.demand_at is not None,
                    autoscale=autoscale_signal(
                        trend,
                        now,
                        upscale_delay_s=self.settings.autoscale_upscale_delay_s,
                        downscale_delay_s=self.settings.autoscale_downscale_delay_s,
                    ),
                    failed=deployment.placement_error is not None,
                    gpu_memory_bytes=estimated_memory(gpu, size, factor),
                )
            )
        return servers, replicas, deployments

    async def _write(self, session: AsyncSession, decisions: Decisions, deployments: dict[str, DeploymentView]) -> None:
        woken: set[str] = set()
        for assign in decisions.assign:
            await session.execute(
                insert(ModelReplica)
                .values(
                    server_id=assign.server_id,
                    model_version_id=assign.version_id,
                    status="assigned",
                    memory_bytes=assign.memory_bytes,
                    gpu_memory_bytes=assign.gpu_memory_bytes,
                )
                .on_conflict_do_nothing()
            )
            session.add(_event(assign.model_id, assign.version_id, assign.server_id, assign.action, assign.reason))
            woken.add(assign.server_id)
            log.info("placed %s on %s: %s", deployments[assign.model_id].name, assign.server_id, assign.reason)
        for evict in decisions.evict:
            await session.execute(
                update(ModelReplica)
                .where(
                    ModelReplica.server_id == evict.server_id,
                    ModelReplica.model_version_id == evict.version_id,
                    ModelReplica.evict_reason.is_(None),
                )
                .values(evict_reason=evict.reason)
            )
            session.add(_event(evict.model_id, evict.version_id, evict.server_id, evict.action, evict.reason))
            woken.add(evict.server_id)
            log.info("evicting %s from %s: %s", evict.version_id, evict.server_id, evict.reason)
        for model_id, reason in decisions.fail.items():
            deployment = deployments[model_id]
            if deployment.failed:
                continue  # said once
            await session.execute(
                update(Deployment).where(Deployment.model_id == model_id).values(placement_error=reason)
            )
            session.add(_event(model_id, deployment.version_id, None, "failed", reason))
            await session.execute(notification(REPLICAS_CHANNEL, deployment.version_id))
            log.warning("cannot place %s: %s", deployment.name, reason)
        if decisions.unfail:
            await session.execute(
                update(Deployment).where(Deployment.model_id.in_(decisions.unfail)).values(placement_error=None)
            )
        if decisions.clear_demand:
            await session.execute(
                update(Deployment).where(Deployment.model_id.in_(decisions.clear_demand)).values(demand_at=None)
            )
        for server_id in woken:
            await session.execute(notification(ASSIGNMENTS_CHANNEL, server_id))


def _event(model_id: str, version_id: str | None, server_id: str | None, action: str, reason: str) -> ServingEvent:
    return ServingEvent(
        model_id=model_id, model_version_id=version_id, server_id=server_id, action=action, reason=reason
    )
