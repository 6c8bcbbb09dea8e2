"""The dispatcher: sends queued jobs to the broker when a worker can start them, fairly between tenants.

A job is created ``queued`` with no message (``core.jobs.create_job``): PostgreSQL holds the demand,
in order, and the broker holds at most what the workers can start now. Each worker's main process:

- registers itself in ``job_workers`` (its node, queues, concurrency, broker) and refreshes its
  heartbeat; it leaves as soon as it is told to stop (before its jobs are given back), and a
  worker that stopped beating is no longer counted;
- tries to be **the** dispatcher of its broker: a session-level advisory lock on a connection of
  its own, so one process at a time dispatches and another takes over when it dies (its
  connection, hence its lock, goes with it);
- as the dispatcher, makes a pass (:func:`dispatch_once`) whenever a job is created or changes
  status (``NOTIFY maas_job_dispatch``, a trigger on ``jobs``: migration 0010), or a worker
  registers, and at least every ``dispatch_poll_s``.

A pass reads the live workers' slots, the jobs running or sent per queue, each tenant's recent use,
its weight and its ``running_jobs_<type>`` quota (``core.quotas``), asks ``core.fair_share.plan``
which waiting jobs go next, stamps them ``dispatched_at`` and sends them after the commit. A crash
between the commit and the send loses nothing: a queued job sent more than ``redispatch_after_s``
ago and never claimed is sent again by the reconciler, and a job that goes back to the queue
(preempted, or its worker lost) waits with ``dispatched_at`` cleared for the next pass.

Run as a thread of ``maas worker`` (started on ``worker_ready``); no command of its own.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from datetime import timedelta

import psycopg
from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down
from sqlalchemy import and_, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core import fair_share, quotas
from core.db import libpq_url
from core.dispatch import Sender, commit_and_send, later
from core.job_states import QUEUED, RUNNING
from core.jobs import RUN_TASK
from core.models import Job, JobWorker, Tenant, TenantQuota
from core.settings import Settings
from job_types.registry import JobTypes
from workers.runtime import WorkerRuntime, runtime

log = logging.getLogger("maas.dispatcher")
CHANNEL = "maas_job_dispatch"
# notifications that arrive this soon after the first are served by the same pass
COALESCE_S = 0.02
# how far back finished jobs still count in a tenant's usage (their weight is 2^-8 by then)
HORIZON_HALF_LIVES = 8
# registry rows of workers gone this long are deleted
FORGET_AFTER = timedelta(hours=1)


def broker_digest(settings: Settings) -> str:
    """Which broker a worker listens on, without its credentials."""
    return hashlib.sha256(settings.service("broker_url").encode()).hexdigest()[:16]


def node_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def register(session: Session, worker: str, broker: str, queues: Iterable[str], concurrency: int) -> None:
    """Add or refresh ``worker``'s row, and wake the dispatcher: it may have slots for it now."""
    values = {"broker": broker, "queues": sorted(queues), "concurrency": concurrency, "heartbeat_at": func.now()}
    session.execute(
        insert(JobWorker).values(id=worker, **values).on_conflict_do_update(index_elements=[JobWorker.id], set_=values)
    )
    session.execute(text(f"NOTIFY {CHANNEL}"))


def heartbeat(session: Session, worker: str) -> bool:
    """Refresh ``worker``'s row; False when it is gone (deleted as dead): register again."""
    done = session.execute(
        update(JobWorker).where(JobWorker.id == worker).values(heartbeat_at=func.now()).returning(JobWorker.id)
    )
    return done.first() is not None


def deregister(session: Session, worker: str) -> None:
    session.execute(delete(JobWorker).where(JobWorker.id == worker))


def read_state(session: Session, job_types: JobTypes, settings: Settings, broker: str) -> fair_share.State:
    """What ``core.fair_share.plan`` needs, as PostgreSQL has it now."""
    queue_of = {name: job_types[name].queue for name in job_types.names()}
    job_queues = set(queue_of.values())
    # the database's clock, which stamped the heartbeats, not this host's
    alive = func.now() - timedelta(seconds=settings.heartbeat_timeout_s)
    workers = [
        fair_share.WorkerSlots(frozenset(q for q in queues if q in job_queues), concurrency)
        for queues, concurrency in session.execute(
            select(JobWorker.queues, JobWorker.concurrency).where(
                JobWorker.broker == broker, JobWorker.heartbeat_at > alive
            )
        )
    ]
    workers = [w for w in workers if w.queues and w.concurrency > 0]
    state = fair_share.State(workers=workers, candidates=[], half_life_s=settings.fair_share_half_life_s)
    served = {q for w in workers for q in w.queues}
    if not served:
        return state

    load: dict[str, int] = {}
    held: dict[tuple[str, str], int] = {}
    held_on_queue: dict[tuple[str, str], int] = {}
    holding = or_(Job.status == RUNNING, and_(Job.status == QUEUED, Job.dispatched_at.is_not(None)))
    for tenant, type_, count in session.execute(
        select(Job.tenant_id, Job.type, func.count()).where(holding).group_by(Job.tenant_id, Job.type)
    ):
        queue = queue_of.get(type_)
        if queue is None:
            continue
        load[queue] = load.get(queue, 0) + count
        held[(tenant, type_)] = count
        held_on_queue[(queue, tenant)] = held_on_queue.get((queue, tenant), 0) + count

    half_life = settings.fair_share_half_life_s
    end = func.coalesce(Job.finished_at, func.now())
    # each job's seconds, decayed by half for every half-life since it ended (0 for a running one)
    decayed = func.extract("epoch", end - Job.started_at) * func.power(
        0.5, func.extract("epoch", func.now() - end) / half_life
    )
    recent: dict[tuple[str, str], float] = {}
    for tenant, type_, seconds in session.execute(
        select(Job.tenant_id, Job.type, func.sum(decayed))
        .where(
            Job.started_at.is_not(None),
            or_(
                Job.status == RUNNING,
                Job.finished_at > func.now() - timedelta(seconds=half_life * HORIZON_HALF_LIVES),
            ),
        )
        .group_by(Job.tenant_id, Job.type)
    ):
        queue = queue_of.get(type_)
        if queue is not None:
            recent[(queue, tenant)] = recent.get((queue, tenant), 0.0) + float(seconds or 0.0)

    # each tenant's first jobs per type, no more than could be sent in one pass; none while every
    # slot is taken (most passes, under load, end here)
    most = sum(w.concurrency for w in workers) - sum(load.get(q, 0) for q in served)
    if most <= 0:
        return fair_share.State(workers=workers, candidates=[], load=load, half_life_s=half_life)
    types = [name for name, queue in queue_of.items() if queue in served]
    rank = (
        func.row_number()
        .over(partition_by=(Job.tenant_id, Job.type), order_by=(Job.priority.desc(), Job.id))
        .label("rank")
    )
    waiting = (
        select(Job.id, Job.tenant_id, Job.type, Job.priority, rank)
        .where(Job.status == QUEUED, Job.dispatched_at.is_(None), Job.type.in_(types))
        .subquery()
    )
    candidates = [
        fair_share.Candidate(row.id, row.tenant_id, row.type, queue_of[row.type], row.priority, row.id)
        for row in session.execute(select(waiting).where(waiting.c.rank <= most))
    ]
    tenants = {c.tenant_id for c in candidates}
    weights = dict(session.execute(select(Tenant.id, Tenant.fair_share_weight).where(Tenant.id.in_(tenants))).all())
    own: dict[str, dict[str, int]] = {tenant: {} for tenant in tenants}
    for tenant, name, value in session.execute(
        select(TenantQuota.tenant_id, TenantQuota.name, TenantQuota.value).where(TenantQuota.tenant_id.in_(tenants))
    ):
        own[tenant][name] = value
    limits = {}
    for tenant, type_ in {(c.tenant_id, c.job_type) for c in candidates}:
        limit = quotas.resolve(quotas.running_jobs(type_), own[tenant], settings)
        if limit is not None:
            limits[(tenant, type_)] = limit
    return fair_share.State(
        workers=workers,
        candidates=candidates,
        load=load,
        held=held,
        held_on_queue=held_on_queue,
        recent_seconds=recent,
        limits=limits,
        weights=weights,
        half_life_s=half_life,
    )


def dispatch_once(rt: WorkerRuntime, sender: Sender, broker: str) -> list[str]:
    """One pass: the ids of the jobs sent, in the order they were chosen."""
    with rt.db() as session:
        chosen = fair_share.plan(read_state(session, rt.job_types, rt.settings, broker))
        sent = []
        for candidate in chosen:
            # guarded: a job canceled since it was read is not sent
            marked = session.scalar(
                update(Job)
                .where(Job.id == candidate.job_id, Job.status == QUEUED, Job.dispatched_at.is_(None))
                .values(dispatched_at=func.now())
                .returning(Job.id)
            )
            if marked is not None:
                later(session, RUN_TASK, candidate.job_id, queue=candidate.queue)
                sent.append(candidate.job_id)
        session.execute(delete(JobWorker).where(JobWorker.heartbeat_at < func.now() - FORGET_AFTER))
        commit_and_send(session, sender)
    if sent:
        log.info("dispatched %d job(s): %s", len(sent), ", ".join(sent))
    return sent


class Dispatcher(threading.Thread):
    """Registers this worker and beats for it; dispatches while it holds its broker's lock."""

    def __init__(self, app: Celery, queues: Iterable[str], concurrency: int):
        super().__init__(name="dispatcher", daemon=True)
        self.app = app
        self.queues = list(queues)
        self.concurrency = concurrency
        self.worker = node_id()
        self.stopped = threading.Event()
        self.leading = threading.Event()

    def run(self) -> None:
        rt = runtime()
        broker = broker_digest(rt.settings)
        beat_every = rt.settings.heartbeat_timeout_s / 3
        next_beat = 0.0
        registered = False
        lock: psycopg.Connection | None = None
        while not self.stopped.is_set():
            try:
                if time.monotonic() >= next_beat or not registered:
                    with rt.db() as session:
                        if not registered or not heartbeat(session, self.worker):
                            register(session, self.worker, broker, self.queues, self.concurrency)
                        session.commit()
                    registered, next_beat = True, time.monotonic() + beat_every
                if lock is None:
                    lock = self._try_lead(rt.settings, broker)
                if lock is None:
                    self.stopped.wait(rt.settings.dispatch_poll_s)
                    continue
                dispatch_once(rt, self.app, broker)
                self._wait(lock, min(rt.settings.dispatch_poll_s, max(next_beat - time.monotonic(), 0.01)))
            except Exception:
                log.exception("dispatcher pass failed; retrying in %ss", rt.settings.dispatch_poll_s)
                if lock is not None:
                    self._close(lock)
                    lock = None
                self.stopped.wait(rt.settings.dispatch_poll_s)
        if lock is not None:
            self._close(lock)
        try:
            with rt.db() as session:
                deregister(session, self.worker)
                session.commit()
        except Exception as exc:  # its heartbeat goes stale instead
            log.warning("could not remove worker %s from the registry: %s", self.worker, exc)

    def _try_lead(self, settings: Settings, broker: str) -> psycopg.Connection | None:
        """A connection holding the dispatcher lock of ``broker`` and listening; None when another holds it."""
        conn = psycopg.connect(libpq_url(settings.service("database_url")), autocommit=True)
        got = conn.execute("SELECT pg_try_advisory_lock(hashtext('maas.dispatch'), hashtext(%s))", (broker,))
        row = got.fetchone()
        if not (row and row[0]):
            conn.close()
            return None
        conn.execute(f"LISTEN {CHANNEL}")
        self.leading.set()
        log.info("worker %s is the job dispatcher", self.worker)
        return conn

    def _wait(self, conn: psycopg.Connection, timeout_s: float) -> None:
        """Until a notification (and those right behind it) or ``timeout_s``."""
        woken = any(True for _ in conn.notifies(timeout=timeout_s, stop_after=1))
        if woken:  # a generator holds the connection's lock: the first must be done before the second
            for _ in conn.notifies(timeout=COALESCE_S):
                pass

    def _close(self, conn: psycopg.Connection) -> None:
        self.leading.clear()
        try:
            conn.close()
        except Exception as exc:
            log.debug("closing the dispatcher connection: %s", exc)


_thread: Dispatcher | None = None


@worker_ready.connect
def _start(sender, **_: object) -> None:
    global _thread
    controller = sender.controller
    queues = list(sender.app.amqp.queues.consume_from)
    _thread = Dispatcher(sender.app, queues, int(controller.concurrency))
    _thread.start()


@worker_shutting_down.connect
def _leave(**_: object) -> None:
    # at once, before the running jobs are given back: no slot of a stopping worker is filled again,
    # and another worker becomes the dispatcher
    if _thread is not None:
        _thread.stopped.set()


@worker_shutdown.connect
def _stop(**_: object) -> None:
    if _thread is not None:
        _thread.stopped.set()
        _thread.join(timeout=5)
