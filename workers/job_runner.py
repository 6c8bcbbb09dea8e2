"""The job runner: claims a job, runs the handler registered for its type, records the end.

The extension point is ``@handler("training")``: a function taking a ``JobContext``
and returning the job's ``result`` (a JSON-able dict). Through the context it
reports progress, metrics, log lines, checkpoints and artifacts (each an event
row), starts child processes that are stopped as a tree on cancel, and finds the
checkpoints of earlier attempts so it can resume. It raises ``JobFailed`` to fail
with a machine-readable code.

While a handler runs, a heartbeat thread stamps the job every
``heartbeat_interval_s`` and picks up cancel requests; if the job was taken from
this worker (its heartbeat went stale and it was re-queued), the work is stopped
and its outcome discarded.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB

from core import jobs as job_service
from core.dispatch import commit_and_send
from core.ids import new_id
from core.job_states import QUEUED, RUNNING, TERMINAL
from core.job_types import get_job_type
from core.models import Artifact, Job, ModelVersion
from core.registry import register_version
from workers.process_tree import ChildProcess
from workers.runtime import WorkerRuntime, holder_is_gone

log = logging.getLogger("maas.jobs")

Handler = Callable[["JobContext"], dict[str, Any] | None]
HANDLERS: dict[str, Handler] = {}


def handler(job_type: str) -> Callable[[Handler], Handler]:
    """Register the function that runs jobs of ``job_type``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[job_type] = fn
        return fn

    return register


class JobFailed(Exception):
    """Raised by a handler: the job fails with ``code`` (machine-readable) and ``message``."""

    def __init__(self, code: str, message: str, **details: Any):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class JobCanceled(Exception):
    """Raised inside a handler once the job was canceled (see ``JobContext.raise_if_canceled``)."""


class JobContext:
    """A running job as its handler sees it."""

    def __init__(self, rt: WorkerRuntime, job: Job, sender):
        self.rt, self.settings, self.store = rt, rt.settings, rt.store
        self.job_id, self.tenant_id, self.attempt = job.id, job.tenant_id, job.attempts
        self.raw_spec: dict[str, Any] = job.spec
        self.spec: BaseModel = get_job_type(job.type).spec.model_validate(job.spec)
        self.canceled = threading.Event()
        self.lost = threading.Event()  # the job was handed to another worker
        self._sender = sender
        self._children: list[ChildProcess] = []
        self._lock = threading.Lock()
        self._last_progress_webhook = 0.0

    # -- reporting ----------------------------------------------------------------------------
    def _write(self, fn: Callable[[Any], None]) -> None:
        with self.rt.db() as session:
            fn(session)
            commit_and_send(session, self._sender)

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        self._write(lambda s: job_service.add_event(s, self.job_id, "log", message, data, level))

    def progress(self, step: int, total_steps: int | None = None, **values: Any) -> None:
        """Where the job is; ``values`` (epoch, loss, samples/s…) ride along in the event."""
        progress = {"step": step, "total_steps": total_steps, **values}
        webhook_due = time.monotonic() - self._last_progress_webhook >= self.settings.webhook_progress_interval_s

        def write(session) -> None:
            job = session.scalar(
                update(Job)
                .where(Job.id == self.job_id, Job.worker_id == self.rt.worker_id)
                .values(progress=progress)
                .returning(Job)
            )
            job_service.add_event(session, self.job_id, "progress", f"step {step}/{total_steps or '?'}", progress)
            if job is not None and webhook_due:
                job_service.notify(session, job, "progress", self.settings.public_base_url)

        self._write(write)
        if webhook_due:
            self._last_progress_webhook = time.monotonic()

    def metrics(self, **values: Any) -> None:
        """Merge ``values`` into the job's metrics."""

        def write(session) -> None:
            merged = Job.metrics.op("||")(type_coerce(values, JSONB))
            session.execute(update(Job).where(Job.id == self.job_id).values(metrics=merged))
            job_service.add_event(session, self.job_id, "metrics", "", values)

        self._write(write)

    def artifact(self, kind: str, name: str, path: Path, **data: Any) -> Artifact:
        """Upload ``path`` to the store and record it as this job's artifact (checksummed)."""
        key = f"jobs/{self.tenant_id}/{self.job_id}/{new_id('artifact')}-{name}"
        stored = self.store.upload_file(key, path)
        row = Artifact(
            id=new_id("artifact"),
            tenant_id=self.tenant_id,
            job_id=self.job_id,
            kind=kind,
            name=name,
            bytes=stored.bytes,
            sha256=stored.sha256,
            storage_key=key,
        )

        def write(session) -> None:
            session.add(row)
            job_service.add_event(
                session,
                self.job_id,
                "checkpoint" if kind == "checkpoint" else "artifact",
                f"{kind} {name} ({stored.bytes} bytes)",
                {"artifact_id": row.id, "kind": kind, "name": name, "sha256": stored.sha256, **data},
            )

        self._write(write)
        return row

    def register_model(
        self, name: str, artifact: Artifact, signature: dict[str, Any], metrics: dict[str, Any], lineage: dict[str, Any]
    ) -> ModelVersion:
        """Add ``artifact`` (an ONNX model of this job) as the next version of model ``name``."""
        with self.rt.db() as session:
            version = register_version(
                session,
                tenant_id=self.tenant_id,
                name=name,
                artifact=session.merge(artifact),
                signature=signature,
                metrics=metrics,
                lineage=lineage,
                source_job_id=self.job_id,
            )
            job_service.add_event(
                session,
                self.job_id,
                "model_version",
                f"registered {name} version {version.version}",
                {"model": name, "version": version.version, "model_version_id": version.id},
            )
            commit_and_send(session, self._sender)
        return version

    def checkpoint(self, path: Path, step: int, **data: Any) -> Artifact:
        return self.artifact("checkpoint", path.name, path, step=step, **data)

    def checkpoints(self) -> list[Artifact]:
        """This job's checkpoints from every attempt, oldest first: the last one is where to resume."""
        with self.rt.db() as session:
            return list(
                session.scalars(
                    select(Artifact)
                    .where(Artifact.job_id == self.job_id, Artifact.kind == "checkpoint")
                    .order_by(Artifact.id)
                )
            )

    def send(self, task: str, *args: Any, queue: str) -> None:
        """Hand a task of this job (e.g. another node's share of it) to the broker."""
        self._sender.send_task(task, args=list(args), queue=queue)

    # -- cancellation and child processes -----------------------------------------------------
    def raise_if_canceled(self) -> None:
        if self.canceled.is_set() or self.lost.is_set():
            raise JobCanceled()

    def run_process(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> int:
        """Run a command in its own process group, each output line to ``on_line`` (default: a log
        event); stopped as a whole tree when the job is canceled. Returns its exit code."""
        self.raise_if_canceled()
        child = ChildProcess(args, env=env, cwd=cwd)
        with self._lock:
            self._children.append(child)
        try:
            for line in child.lines():
                (on_line or self.log)(line)
            code = child.wait()
            child.reap_leftovers()
        finally:
            with self._lock:
                self._children.remove(child)
        self.raise_if_canceled()
        return code

    def stop_children(self) -> None:
        with self._lock:
            children = list(self._children)
        for child in children:
            child.stop(self.settings.cancel_grace_s)


class Heartbeat(threading.Thread):
    """Stamps the job while it runs; notices cancel requests and a lost claim."""

    def __init__(self, ctx: JobContext):
        super().__init__(name=f"heartbeat-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.done = threading.Event()

    def run(self) -> None:
        ctx = self.ctx
        while not self.done.wait(ctx.settings.heartbeat_interval_s):
            try:
                with ctx.rt.db() as session:
                    row = session.execute(
                        update(Job)
                        .where(Job.id == ctx.job_id, Job.worker_id == ctx.rt.worker_id, Job.status == RUNNING)
                        .values(heartbeat_at=func.now())
                        .returning(Job.cancel_requested_at)
                    ).first()
                    session.commit()
            except Exception as exc:  # a database blip must not kill the job; the next beat retries
                log.warning("heartbeat of %s failed: %s", ctx.job_id, exc)
                continue
            if row is None:
                ctx.lost.set()
            elif row.cancel_requested_at is not None:
                ctx.canceled.set()
            if ctx.lost.is_set() or ctx.canceled.is_set():
                ctx.stop_children()
                return


def claim(rt: WorkerRuntime, job_id: str, sender) -> Job | None:
    """Take the job for this process: a queued one, or a running one whose worker is gone."""
    settings = rt.settings
    with rt.db() as session:
        job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
        if job is None or job.status in TERMINAL:
            return None
        if job.status == RUNNING:
            stale = (
                job.heartbeat_at is None
                or (session.scalar(select(func.now())) - job.heartbeat_at).total_seconds()
                > settings.heartbeat_timeout_s
            )
            if not (stale or holder_is_gone(job.worker_id)):
                return None  # alive elsewhere: this message is a duplicate
        if job.attempts >= job.max_attempts:
            give_up(session, job, settings, f"worker {job.worker_id} was lost")
            commit_and_send(session, sender)
            return None
        values = {
            "attempts": Job.attempts + 1,
            "worker_id": rt.worker_id,
            "heartbeat_at": func.now(),
            "started_at": func.coalesce(Job.started_at, func.now()),
        }
        if job.status == RUNNING:
            previous = job.worker_id
            session.execute(update(Job).where(Job.id == job_id).values(**values))
            job_service.add_event(
                session,
                job_id,
                "status",
                f"running again: worker {previous} was lost",
                {"status": RUNNING, "attempt": job.attempts + 1, "previous_worker": previous},
            )
            session.flush()
            session.refresh(job)
        else:
            job = job_service.transition(
                session,
                job_id,
                RUNNING,
                settings,
                values=values,
                event_data={"attempt": job.attempts + 1, "worker": rt.worker_id},
            )
        commit_and_send(session, sender)
        return job


def finish(
    rt: WorkerRuntime,
    ctx: JobContext,
    target: str,
    sender,
    *,
    message: str = "",
    values: dict[str, Any] | None = None,
) -> None:
    with rt.db() as session:
        done = job_service.transition(
            session, ctx.job_id, target, rt.settings, message=message, worker_id=rt.worker_id, values=values
        )
        if done is None:
            log.info("job %s: %s not recorded (canceled or taken over meanwhile)", ctx.job_id, target)
        commit_and_send(session, sender)


def run_job(rt: WorkerRuntime, job_id: str, sender) -> None:
    job = claim(rt, job_id, sender)
    if job is None:
        return
    ctx = JobContext(rt, job, sender)
    beat = Heartbeat(ctx)
    beat.start()
    try:
        fn = HANDLERS.get(job.type)
        if fn is None:
            raise JobFailed("unsupported_job_type", f"this worker has no handler for job type {job.type!r}")
        result = fn(ctx) or {}
        ctx.raise_if_canceled()
    except JobCanceled:
        pass
    except JobFailed as exc:
        if not (ctx.canceled.is_set() or ctx.lost.is_set()):
            error = {"code": exc.code, "message": exc.message, **exc.details}
            finish(rt, ctx, "failed", sender, message=exc.message, values={"error": error})
            return
    except Exception as exc:
        if not (ctx.canceled.is_set() or ctx.lost.is_set()):
            log.exception("job %s failed", job_id)
            ctx.log(traceback.format_exc(), level="error")
            finish(
                rt,
                ctx,
                "failed",
                sender,
                message=str(exc),
                values={"error": {"code": "handler_error", "message": f"{type(exc).__name__}: {exc}"}},
            )
            return
    else:
        finish(rt, ctx, "succeeded", sender, values={"result": result})
        return
    finally:
        beat.done.set()
        ctx.stop_children()
    if ctx.canceled.is_set():
        finish(rt, ctx, "canceled", sender, message="canceled while running")


def give_up(session, job: Job, settings, reason: str) -> None:
    """Fail a job whose worker was lost on its last allowed attempt (found by a redelivery or the reconciler)."""
    job_service.transition(
        session,
        job.id,
        "failed",
        settings,
        message=f"gave up after {job.attempts} attempts: {reason}",
        values={
            "error": {
                "code": "max_attempts_exceeded",
                "message": f"the job was started {job.attempts} times and its worker was lost each time; "
                f"last: {reason}",
            }
        },
    )


def requeue_or_fail(session, job: Job, settings, reason: str) -> None:
    """A running job whose worker is gone: back to the queue, or failed when out of attempts."""
    if job.attempts >= job.max_attempts:
        give_up(session, job, settings, reason)
        return
    requeued = job_service.transition(
        session,
        job.id,
        QUEUED,
        settings,
        message=reason,
        values={"worker_id": None},
        event_data={"reason": reason},
    )
    if requeued is not None:
        job_service.dispatch(session, requeued)
