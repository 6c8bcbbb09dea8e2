"""What a job type is, and what its handler may ask of the worker running it.

A job type is one ``JobType`` object: its typed spec (validated by the API, handed to the worker
as is), its queue, its pre-create checks (the ones that read the tenant's files and the
platform's limits: a 422 before anything is created), its handler, and how many attempts it
gets. ``job_types.registry`` lists them.

The handler runs in a worker and sees the job through a ``JobContext``: it reports progress,
metrics, log lines, checkpoints and artifacts (each an event row), starts child processes that
are stopped as a tree on cancel, finds the checkpoints of earlier attempts, deletes the ones it
no longer keeps, and raises
``JobFailed`` to fail with a machine-readable code. The runner in ``workers.job_runner``
implements the context; a job type never imports the worker side.

A job that spans several nodes sends each other node its share with ``start_node``; the worker
that takes it calls the type's ``node_handler`` with a ``NodeContext``.

When its worker is told to stop (scale-in, a node drain, a spot reclaim), a handler is asked to
give the job back: the callbacks it registered with ``on_preempt`` run, it saves its state at
its next safe point (a checkpoint) and raises ``JobPreempted``; the job goes back to the queue
without using an attempt, and the next worker resumes from that state. A handler that registers
nothing has its processes stopped at once and is re-run from its last checkpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from core.artifact_store import ArtifactStore
from core.settings import Settings
from core.spec_kit import FieldProblem

if TYPE_CHECKING:
    from core.models import Artifact, ModelVersion


class JobFailed(Exception):
    """Raised by a handler: the job fails with ``code`` (machine-readable) and ``message``."""

    def __init__(self, code: str, message: str, **details: Any):
        super().__init__(message)
        self.code, self.message, self.details = code, message, details


class JobPreempted(Exception):
    """Raised by a handler that saved its state and stopped because its worker is shutting down."""

    def __init__(self, message: str, **details: Any):
        super().__init__(message)
        self.message, self.details = message, details


class JobCanceled(Exception):
    """Raised inside a handler once the job was canceled (see ``JobContext.raise_if_canceled``)."""


class RunContext(Protocol):
    """What both a job's handler and a node's share see."""

    job_id: str
    tenant_id: str
    attempt: int
    settings: Settings
    store: ArtifactStore
    db: sessionmaker[Session]
    spec: Any  # the job type's spec model, validated
    raw_spec: dict[str, Any]

    def log(self, message: str, level: str = "info", **data: Any) -> None: ...

    def fetch_file(self, file_id: str, target: Path) -> Path:
        """Download an uploaded file of the tenant, its sha256 checked (``JobFailed`` when it is gone)."""
        ...

    def run_process(
        self,
        args: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        on_line: Callable[[str], None] | None = None,
    ) -> int:
        """Run a command in its own process group, each output line to ``on_line`` (default: a log
        event); the whole tree is stopped when the job is canceled or moves on. Its exit code."""
        ...

    def on_preempt(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from another thread, once) when the worker is told to stop: the
        handler should then save its state at its next safe point and raise ``JobPreempted``
        (a node's share just ends) within ``MAAS_PREEMPT_GRACE_S``."""
        ...

    def preempt_requested(self) -> bool:
        """Whether the worker was told to stop (for handlers that poll between chunks)."""
        ...


class JobContext(RunContext, Protocol):
    """A running job as its handler sees it."""

    def progress(self, step: int, total_steps: int | None = None, **values: Any) -> None: ...

    def metrics(self, **values: Any) -> None:
        """Merge ``values`` into the job's metrics."""
        ...

    def artifact(self, kind: str, name: str, path: Path, **data: Any) -> Artifact:
        """Upload ``path`` and record it as this job's artifact (checksummed)."""
        ...

    def register_model(
        self, name: str, artifact: Artifact, signature: dict[str, Any], metrics: dict[str, Any], lineage: dict[str, Any]
    ) -> ModelVersion:
        """Add ``artifact`` (an ONNX model of this job) as the next version of model ``name``."""
        ...

    def checkpoint(self, path: Path, step: int, **data: Any) -> Artifact: ...

    def checkpoints(self) -> list[Artifact]:
        """This job's live (not deleted) checkpoints from every attempt, oldest first: the last one
        is where to resume."""
        ...

    def checkpoint_data(self) -> dict[str, dict[str, Any]]:
        """What each checkpoint of this job was recorded with (``checkpoint``'s ``step`` and
        ``data``), by artifact id."""
        ...

    def delete_artifact(self, artifact: Artifact, reason: str) -> None:
        """Delete an artifact of this job from the store; its row stays, marked deleted with
        ``reason`` (its download answers 410), and a job event says so."""
        ...

    def start_node(self, node_rank: int, payload: dict[str, Any]) -> None:
        """Send node ``node_rank``'s share of this attempt to the job type's queue (JSON ``payload``)."""
        ...

    def raise_if_canceled(self) -> None: ...


class NodeContext(RunContext, Protocol):
    """Another node's share of a running job, as the type's ``node_handler`` sees it."""

    node_rank: int


Handler = Callable[[JobContext], dict[str, Any] | None]
NodeHandler = Callable[[NodeContext, dict[str, Any]], None]
# checks of a valid spec against the world, in the API's transaction: problems with pointers into the spec
Check = Callable[[Session, str, Any, Settings], list[FieldProblem]]


@dataclass(frozen=True)
class JobType:
    """One kind of job: everything the API and the workers need to know of it."""

    name: str
    spec: type[BaseModel]
    queue: str
    handler: Handler | None
    check: Check | None = None
    max_attempts: int = 3
    node_handler: NodeHandler | None = None
