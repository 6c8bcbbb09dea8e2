"""The reconciler: makes Postgres and the broker agree again after crashes and lost messages.

Every ``reconcile_interval_s``, in each worker's main process (rows are taken with
SKIP LOCKED, so several workers never act on the same one):

- a running job whose heartbeat is older than ``heartbeat_timeout_s`` lost its
  worker: it is re-queued (the dispatcher, ``workers.dispatcher``, sends it again), or failed
  when it has no attempts left. Not judged for ``heartbeat_timeout_s`` after the database was
  unreachable: nobody could heartbeat during the outage, and the running workers catch up once
  it is back;
- a queued job dispatched more than ``redispatch_after_s`` ago and not claimed may have lost its
  message (a broker restarted without persistence): it is dispatched again (a
  duplicate is harmless, the runner's claim lets only one run it);
- a webhook delivery overdue by more than a grace period is sent again;
- an asynchronous prediction still queued after ``redispatch_after_s`` is sent again (a duplicate
  finds it running or done and does nothing);
- expired idempotency keys are deleted.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy import delete, select

from core import jobs as job_service
from core import predictions
from core.dispatch import commit_and_send, later
from core.job_states import QUEUED, RUNNING
from core.models import IdempotencyKey, Job, Prediction, WebhookDelivery
from core.webhooks import DELIVER_TASK
from workers.job_runner import requeue_or_fail
from workers.runtime import WorkerRuntime, runtime

log = logging.getLogger("maas.reconciler")
BATCH = 100


def reconcile_once(rt: WorkerRuntime, sender, *, judge_heartbeats: bool = True) -> dict[str, int]:
    """One pass; how many rows of each kind it acted on."""
    settings = rt.settings
    now = datetime.now(UTC)
    counts = {
        "requeued_or_failed": 0,
        "redispatched": 0,
        "webhooks_resent": 0,
        "predictions_resent": 0,
        "idempotency_keys_expired": 0,
    }
    with rt.db() as session:
        stale = (
            session.scalars(
                select(Job)
                .where(
                    Job.status == RUNNING,
                    Job.heartbeat_at < now - timedelta(seconds=settings.heartbeat_timeout_s),
                )
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            if judge_heartbeats
            else []
        )
        for job in stale:
            if _queue_of(rt, job) is not None:
                requeue_or_fail(session, job, settings, f"worker {job.worker_id} stopped sending heartbeats")
                counts["requeued_or_failed"] += 1

        lost = session.scalars(
            select(Job)
            .where(Job.status == QUEUED, Job.dispatched_at < now - timedelta(seconds=settings.redispatch_after_s))
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for job in lost:
            queue = _queue_of(rt, job)
            if queue is not None:
                job_service.dispatch(session, job, queue)
                counts["redispatched"] += 1

        overdue = session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.status == "pending",
                WebhookDelivery.next_attempt_at < now - timedelta(seconds=2 * settings.webhook_timeout_s + 5),
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for delivery in overdue:
            delivery.next_attempt_at = now
            later(session, DELIVER_TASK, delivery.id, queue="webhooks")
        counts["webhooks_resent"] = len(overdue)

        stuck = session.scalars(
            select(Prediction)
            .where(
                Prediction.status == QUEUED,
                Prediction.is_async,
                Prediction.dispatched_at < now - timedelta(seconds=settings.redispatch_after_s),
            )
            .limit(BATCH)
            .with_for_update(skip_locked=True)
        ).all()
        for prediction in stuck:
            predictions.dispatch(session, prediction)
        counts["predictions_resent"] = len(stuck)

        counts["idempotency_keys_expired"] = session.execute(
            delete(IdempotencyKey).where(IdempotencyKey.expires_at < now)
        ).rowcount
        commit_and_send(session, sender)
    if any(counts.values()):
        log.info("reconciled: %s", counts)
    return counts


def _queue_of(rt: WorkerRuntime, job: Job) -> str | None:
    """The queue of the job's type; None (and a warning) for a type this deployment does not have."""
    job_type = rt.job_types.get(job.type)
    if job_type is None:
        log.warning("job %s has type %r, which this worker does not know; left as it is", job.id, job.type)
        return None
    return job_type.queue


class Reconciler(threading.Thread):
    def __init__(self, app: Celery):
        super().__init__(name="reconciler", daemon=True)
        self.app = app
        self.stopped = threading.Event()

    def run(self) -> None:
        rt = runtime()
        back_since = float("-inf")  # the first pass after a failed one (the database was unreachable)
        failing = False
        while not self.stopped.wait(rt.settings.reconcile_interval_s):
            if failing:
                back_since, failing = time.monotonic(), False
            judge = time.monotonic() - back_since >= rt.settings.heartbeat_timeout_s
            try:
                reconcile_once(rt, self.app, judge_heartbeats=judge)
            except Exception:
                failing = True
                log.exception("reconcile pass failed; retrying in %ss", rt.settings.reconcile_interval_s)


_thread: Reconciler | None = None


@worker_ready.connect
def _start(sender, **_: object) -> None:
    global _thread
    _thread = Reconciler(sender.app)
    _thread.start()


@worker_shutdown.connect
def _stop(**_: object) -> None:
    if _thread is not None:
        _thread.stopped.set()
