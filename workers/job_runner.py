"""The job runner: claims a job, runs its type's handler, records the end.

The handler (``job_types``) sees the job through a ``JobRun``, this module's implementation of
``job_types.base.JobContext``: progress, metrics, log lines, checkpoints and artifacts become
event rows; child processes are stopped as a tree on cancel; the checkpoints of earlier
attempts are there to resume from. A ``JobFailed`` fails the job with its code.

While a handler runs, a heartbeat thread stamps the job every ``heartbeat_interval_s`` and
picks up cancel requests; if the job was taken from this worker (its heartbeat went stale and
it was re-queued), the work is stopped and its outcome discarded. A node's share of a
multi-node job runs as a ``NodeRun`` (:func:`run_node`) until the job stops running that attempt.

When the worker is shutting down (``workers.preemption``), a job whose handler did not finish
goes back to the queue with its attempt given back (:func:`give_back`), to resume elsewhere once
the dispatcher (``workers.dispatcher``) sends it again.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, type_coerce, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from core import jobs as job_service
from core.db import through_outage
from core.deletion import mark_artifact_deleted
from core.dispatch import Sender, commit_and_send
from core.ids import new_id
from core.job_states import QUEUED, RUNNING, TERMINAL
from core.model_registry import register_version
from core.models import Artifact, File, Job, JobEvent, ModelVersion
from job_types.base import JobCanceled, JobFailed, JobPreempted, JobType
from workers.job_metering import meter_job
from workers.preemption import PreemptWatch
from workers.process_tree import ChildProcess
from workers.runtime import WorkerRuntime, holder_is_gone

log = logging.getLogger("maas.jobs")
NODE_TASK = "workers.jobs.node"
NODE_FINISH_GRACE_S = 30.0


class _Run:
    """What a job's run and a node's share have in common: the job, its spec, files and processes."""

    def __init__(self, rt: WorkerRuntime, job: Job, job_type: JobType):
        self.rt, self.settings, self.store, self.db = rt, rt.settings, rt.store, rt.db
        self.job_id, self.tenant_id, self.attempt = job.id, job.tenant_id, job.attempts
        self.job_type = job_type
        self.raw_spec: dict[str, Any] = job.spec
        self.spec: Any = job_type.spec.model_validate(job.spec)
        self._children: list[ChildProcess] = []
        self._lock = threading.Lock()
        self.preemption = PreemptWatch(self.job_id, self.settings.preempt_grace_s, self.stop_children, self._preempted)

    def _preempted(self) -> None:
        self.log(
            "the worker is stopping: the job saves its state at its next safe point and goes back to the "
            f"queue (within {self.settings.preempt_grace_s:g} s)",
            level="warning",
        )

    def on_preempt(self, callback: Callable[[], None]) -> None:
        self.preemption.callbacks.append(callback)

    def preempt_requested(self) -> bool:
        return self.preemption.preempted.is_set()

    def _write(self, fn: Callable[[Session], object]) -> None:
        """Run ``fn`` in a transaction and commit it, through a database outage."""

        def once() -> None:
            with self.db() as session:
                fn(session)
                self._commit(session)

        through_outage(once, self.settings.db_outage_tolerance_s, f"job {self.job_id}")

    def _commit(self, session: Session) -> None:
        session.commit()

    def log(self, message: str, level: str = "info", **data: Any) -> None:
        self._write(lambda s: job_service.add_event(s, self.job_id, "log", message, data, level))

    def fetch_file(self, file_id: str, target: Path) -> Path:
        with self.db() as session:
            file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == self.tenant_id))
        if file is None:
            raise JobFailed("bad_dataset", f"the file {file_id} no longer exists")
        self.store.download_file(file.storage_key, target, expected_sha256=file.sha256)
        return target

    def raise_if_canceled(self) -> None:
        """Overridden by a job's run; a node's share is stopped from outside instead."""

    def run_process(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> int:
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


class JobRun(_Run):
    """A running job as its handler sees it (``job_types.base.JobContext``)."""

    def __init__(self, rt: WorkerRuntime, job: Job, job_type: JobType, sender: Sender):
        super().__init__(rt, job, job_type)
        self.canceled = threading.Event()
        self.lost = threading.Event()  # the job was handed to another worker
        self._sender = sender
        self._last_progress_webhook = 0.0

    # -- reporting ----------------------------------------------------------------------------
    def _commit(self, session: Session) -> None:
        commit_and_send(session, self._sender)  # a job's writes may queue webhooks and messages

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
        with self.db() as session:
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
        """This job's live checkpoints from every attempt, oldest first: the last one is where to resume."""
        with self.db() as session:
            return list(
                session.scalars(
                    select(Artifact)
                    .where(
                        Artifact.job_id == self.job_id,
                        Artifact.kind == "checkpoint",
                        Artifact.deleted_at.is_(None),
                    )
                    .order_by(Artifact.id)
                )
            )

    def checkpoint_data(self) -> dict[str, dict[str, Any]]:
        """What each checkpoint was recorded with (its checkpoint event's data), by artifact id."""
        with self.db() as session:
            rows = session.scalars(
                select(JobEvent.data).where(JobEvent.job_id == self.job_id, JobEvent.type == "checkpoint")
            )
            return {data["artifact_id"]: data for data in rows if data.get("artifact_id")}

    def delete_artifact(self, artifact: Artifact, reason: str) -> None:
        """Mark the row deleted first (a resume never picks a checkpoint whose object is going),
        then remove the object; a store that fails to delete leaves a warning, not a failed job."""

        def write(session) -> None:
            mark_artifact_deleted(session, artifact.id, reason)
            job_service.add_event(
                session,
                self.job_id,
                "artifact_deleted",
                f"deleted {artifact.kind} {artifact.name}: {reason}",
                {"artifact_id": artifact.id, "kind": artifact.kind, "name": artifact.name, "reason": reason},
            )

        self._write(write)
        try:
            self.store.delete(artifact.storage_key)
        except Exception as exc:  # the row says deleted either way; the object is only wasted space
            log.warning("job %s: deleting %s from the store failed: %s", self.job_id, artifact.storage_key, exc)
            self.log(
                f"the store did not delete {artifact.kind} {artifact.name}: {exc}",
                level="warning",
                artifact_id=artifact.id,
            )

    def start_node(self, node_rank: int, payload: dict[str, Any]) -> None:
        self._sender.send_task(
            NODE_TASK, args=[self.job_id, self.attempt, node_rank, payload], queue=self.job_type.queue
        )

    # -- cancellation -------------------------------------------------------------------------
    def raise_if_canceled(self) -> None:
        if self.canceled.is_set() or self.lost.is_set():
            raise JobCanceled()
        if self.preempt_requested() and not self.preemption.callbacks:
            # a handler that saves nothing on request stops at its next safe point
            raise JobPreempted("the worker is stopping")


class Heartbeat(threading.Thread):
    """Stamps the job while it runs; notices cancel requests and a lost claim."""

    def __init__(self, ctx: JobRun):
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
    ctx: JobRun,
    target: str,
    sender,
    *,
    message: str = "",
    values: dict[str, Any] | None = None,
) -> None:
    def once() -> None:
        with rt.db() as session:
            done = job_service.transition(
                session, ctx.job_id, target, rt.settings, message=message, worker_id=rt.worker_id, values=values
            )
            if done is None:
                log.info("job %s: %s not recorded (canceled or taken over meanwhile)", ctx.job_id, target)
            commit_and_send(session, sender)

    through_outage(once, rt.settings.db_outage_tolerance_s, f"job {ctx.job_id}")


def run_job(rt: WorkerRuntime, job_id: str, sender) -> None:
    job = claim(rt, job_id, sender)
    if job is None:
        return
    job_type = rt.job_types.get(job.type)
    if job_type is None or job_type.handler is None:
        with rt.db() as session:
            message = f"this worker has no handler for job type {job.type!r}"
            error = {"code": "unsupported_job_type", "message": message}
            job_service.transition(
                session, job_id, "failed", rt.settings, message=message, worker_id=rt.worker_id, values={"error": error}
            )
            commit_and_send(session, sender)
        return
    ctx = JobRun(rt, job, job_type, sender)
    beat = Heartbeat(ctx)
    beat.start()
    ctx.preemption.start()
    began = time.monotonic()
    try:
        result = job_type.handler(ctx) or {}
        if ctx.canceled.is_set() or ctx.lost.is_set():  # a result that came too late
            raise JobCanceled()
    except JobCanceled:
        pass
    except Exception as exc:
        if ctx.preempt_requested() and not (ctx.canceled.is_set() or ctx.lost.is_set()):
            give_back(rt, ctx, sender, exc)
            return
        _record_failure(rt, ctx, sender, exc)
        return
    else:
        finish(rt, ctx, "succeeded", sender, values={"result": result})
        return
    finally:
        beat.done.set()
        ctx.preemption.done.set()
        ctx.stop_children()
        meter_job(rt, job.tenant_id, job.type, job.spec, time.monotonic() - began)  # whatever the outcome
    if ctx.canceled.is_set():
        finish(rt, ctx, "canceled", sender, message="canceled while running")


def _record_failure(rt: WorkerRuntime, ctx: JobRun, sender, exc: Exception) -> None:
    """Fail the job for ``exc`` (with a JobFailed's code), unless it was canceled or taken over."""
    if ctx.canceled.is_set() or ctx.lost.is_set():
        return
    if isinstance(exc, JobFailed):
        error = {"code": exc.code, "message": exc.message, **exc.details}
        finish(rt, ctx, "failed", sender, message=exc.message, values={"error": error})
        return
    log.error("job %s failed", ctx.job_id, exc_info=exc)
    ctx.log("".join(traceback.format_exception(exc)), level="error")
    error = {"code": "handler_error", "message": f"{type(exc).__name__}: {exc}"}
    finish(rt, ctx, "failed", sender, message=str(exc), values={"error": error})


def give_back(rt: WorkerRuntime, ctx: JobRun, sender, exc: Exception) -> None:
    """The worker is stopping: the job goes back to its queue, its attempt given back (being
    preempted is not the job's failure), and a ``preempted`` event says where it stopped."""
    details = exc.details if isinstance(exc, JobPreempted) else {}
    reason = exc.message if isinstance(exc, JobPreempted) else f"its processes were stopped ({type(exc).__name__})"
    with rt.db() as session:
        job = job_service.transition(
            session,
            ctx.job_id,
            QUEUED,
            rt.settings,
            message=f"preempted: {reason}",
            worker_id=rt.worker_id,
            # back among the waiting jobs: the dispatcher sends it again when a slot is free
            values={"worker_id": None, "attempts": Job.attempts - 1, "dispatched_at": None},
            event_data={"reason": "preempted"},
        )
        if job is not None:
            job_service.add_event(session, ctx.job_id, "preempted", reason, {"attempt": ctx.attempt, **details})
        commit_and_send(session, sender)
    log.info("job %s preempted: %s", ctx.job_id, reason)


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


def requeue_or_fail(session: Session, job: Job, settings, reason: str) -> None:
    """A running job whose worker is gone: back among the waiting jobs (the dispatcher sends it
    again), or failed when out of attempts."""
    if job.attempts >= job.max_attempts:
        give_up(session, job, settings, reason)
        return
    job_service.transition(
        session,
        job.id,
        QUEUED,
        settings,
        message=reason,
        values={"worker_id": None, "dispatched_at": None},
        event_data={"reason": reason},
    )


class NodeRun(_Run):
    """Another node's share of a running job (``job_types.base.NodeContext``): its processes are
    stopped as soon as the job stops running the attempt the share belongs to, except that after a
    success they get ``NODE_FINISH_GRACE_S`` to end by themselves (node 0 may publish and finish
    while this node's torchrun is still shutting down)."""

    def __init__(self, rt: WorkerRuntime, job: Job, job_type: JobType, node_rank: int):
        super().__init__(rt, job, job_type)
        self.node_rank = node_rank
        self.holder = job.worker_id  # node 0's worker: the one a failure of this share is recorded against
        self.done = threading.Event()

    def status(self) -> str | None:
        """The job's status while it is on this share's attempt; None once it is gone or re-run."""
        with self.db() as session:
            job = session.get(Job, self.job_id)
        return job.status if job is not None and job.attempts == self.attempt else None

    def watch(self) -> None:
        while not self.done.wait(self.settings.heartbeat_interval_s):
            status = self.status()
            if status == RUNNING:
                continue
            if status == "succeeded":
                self.done.wait(NODE_FINISH_GRACE_S)
            self.stop_children()
            return


def run_node(
    rt: WorkerRuntime, job_id: str, attempt: int, node_rank: int, payload: dict[str, Any], sender: Sender
) -> None:
    """Run node ``node_rank``'s share of attempt ``attempt`` of a job, unless the job moved on.

    A ``JobFailed`` from the share fails the job (while node 0's worker still holds that attempt):
    node 0 sees it on its next heartbeat and stops, instead of waiting out the rendezvous."""
    with rt.db() as session:
        job = session.get(Job, job_id)
    if job is None or job.status != RUNNING or job.attempts != attempt:
        return
    job_type = rt.job_types.get(job.type)
    if job_type is None or job_type.node_handler is None:
        log.error("job %s: type %r runs on one node only; share %d dropped", job_id, job.type, node_rank)
        return
    run = NodeRun(rt, job, job_type, node_rank)
    watcher = threading.Thread(target=run.watch, name=f"node-{job_id}-{node_rank}", daemon=True)
    watcher.start()
    run.preemption.start()
    try:
        job_type.node_handler(run, payload)
    except JobFailed as exc:
        if run.status() == RUNNING:
            with rt.db() as session:
                job_service.transition(
                    session,
                    job_id,
                    "failed",
                    rt.settings,
                    message=f"node {node_rank}: {exc.message}",
                    worker_id=run.holder,
                    values={"error": {"code": exc.code, "message": exc.message, "node": node_rank, **exc.details}},
                )
                commit_and_send(session, sender)
    finally:
        run.done.set()
        run.preemption.done.set()
        run.stop_children()
