"""Jobs in Postgres: creation, the one state-transition function, events and webhooks.

Everything here runs on a synchronous SQLAlchemy session: workers call it
directly, the API through ``AsyncSession.run_sync``, so there is one copy of the
rules. Every status change is a guarded UPDATE (``WHERE status IN sources``) plus
a ``status`` event and, when the job has a webhook that wants it, an outbox row.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from core import webhooks
from core.dispatch import later
from core.ids import new_id
from core.job_states import QUEUED, RUNNING, TERMINAL
from core.models import Job, JobEvent
from core.objects import JobObject
from core.settings import Settings
from core.status_update import guarded_update

RUN_TASK = "workers.jobs.run"


def now() -> datetime:
    return datetime.now(UTC)


def add_event(
    session: Session,
    job_id: str,
    type_: str,
    message: str = "",
    data: dict[str, Any] | None = None,
    level: str = "info",
) -> JobEvent:
    event = JobEvent(id=new_id("job_event"), job_id=job_id, type=type_, message=message, data=data or {}, level=level)
    session.add(event)
    return event


def notify(session: Session, job: Job, event: str, base_url: str) -> None:
    """Queue the job's webhook for ``event`` when it wants it."""
    if job.webhook and webhooks.wants(event, job.webhook, job.webhook_events_filter):
        webhooks.enqueue(
            session,
            job.tenant_id,
            job.id,
            event,
            job.webhook,
            {**JobObject.from_row(job, base_url).model_dump(mode="json"), "event": event},
        )


def dispatch(session: Session, job: Job, queue: str) -> None:
    """Ask a worker of ``queue`` (the job type's) to run the job, after commit. Only the dispatcher
    (``workers.dispatcher``) and the reconciler (a message that may be lost) send jobs."""
    job.dispatched_at = now()
    later(session, RUN_TASK, job.id, queue=queue)


def create_job(
    session: Session,
    *,
    tenant_id: str,
    type_: str,
    queue: str,
    max_attempts: int,
    spec: dict[str, Any],
    webhook: str | None,
    webhook_events_filter: list[str],
    metadata: dict[str, str],
    priority: int = 0,
) -> Job:
    """A queued job; nothing is sent: the dispatcher sends it once a worker of ``queue`` can start it
    and it is its tenant's turn (``core.fair_share``). The insert wakes the dispatcher."""
    job = Job(
        id=new_id("job"),
        tenant_id=tenant_id,
        type=type_,
        status=QUEUED,
        spec=spec,
        progress={},
        metrics={},
        attempts=0,
        max_attempts=max_attempts,
        priority=priority,
        webhook=webhook,
        webhook_events_filter=webhook_events_filter,
        metadata_=metadata,
    )
    session.add(job)
    session.flush()
    add_event(session, job.id, "status", "queued", {"status": QUEUED})
    session.flush()
    session.refresh(job)
    return job


def transition(
    session: Session,
    job_id: str,
    target: str,
    settings: Settings,
    *,
    message: str = "",
    worker_id: str | None = None,
    values: dict[str, Any] | None = None,
    event_data: dict[str, Any] | None = None,
) -> Job | None:
    """Move a job to ``target`` if the state machine allows it from its current status.

    With ``worker_id``, only while that worker still holds the job. Returns the
    updated job, or None when the change was refused (already terminal, or claimed
    by someone else): the caller lost a race and must not act as if it won.
    """
    values = dict(values or {})
    if target in TERMINAL:
        values.setdefault("finished_at", now())
    held_by = [Job.worker_id == worker_id] if worker_id is not None else []
    job = guarded_update(session, Job, job_id, target, values, *held_by)
    if job is None:
        return None
    add_event(
        session,
        job_id,
        "status",
        message or target,
        {"status": target, **(event_data or {})},
        level="error" if target == "failed" else "info",
    )
    webhook_event = webhooks.EVENT_FOR_STATUS.get(target)
    if webhook_event:
        notify(session, job, webhook_event, settings.public_base_url)
    return job


def request_cancel(session: Session, job_id: str, tenant_id: str, settings: Settings) -> Job | None:
    """Cancel a queued job at once; mark a running one for its worker to stop. None: not found."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id).with_for_update())
    if job is None:
        return None
    if job.status == QUEUED:
        return transition(session, job_id, "canceled", settings, message="canceled before it started")
    if job.status == RUNNING and job.cancel_requested_at is None:
        job.cancel_requested_at = now()
        add_event(session, job_id, "cancel_requested", "cancel requested; stopping the running work")
        session.flush()
    return job


def counts_by_status(session: Session) -> list[tuple[str, str, int]]:
    return list(session.execute(select(Job.type, Job.status, func.count()).group_by(Job.type, Job.status)))


def waiting_counts(session: Session) -> list[tuple[str, int]]:
    """Queued jobs not sent to the broker yet, by type: the demand waiting for a free slot."""
    waiting = (Job.status == QUEUED) & Job.dispatched_at.is_(None)
    return [(t, n) for t, n in session.execute(select(Job.type, func.count()).where(waiting).group_by(Job.type))]
