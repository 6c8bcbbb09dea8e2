"""Following a job from the terminal (``maas jobs submit --wait``, ``maas jobs logs -f``): a live
``rich`` progress bar fed by the job's Server-Sent Events (step/total, epoch, loss, accuracy,
samples/s, ETA), status changes and log lines printed above it, a summary table at the end, and the
exit code of the outcome. Ctrl-C asks whether to cancel the job; "no" leaves it running.

``JobView`` (pure) folds events into what the bar shows; ``follow`` does the I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.prompt import Confirm
from rich.text import Text

from cli.render import pairs
from core.objects import JobEventObject, JobObject
from maas_client import Client

SUCCEEDED, FAILED, CANCELED, DETACHED = 0, 1, 3, 130
EXIT_CODES = {"succeeded": SUCCEEDED, "failed": FAILED, "canceled": CANCELED}
SHOWN = ("epoch", "loss", "accuracy", "samples_per_s")  # validation values are in the summary
QUIET_TYPES = ("progress", "metrics")


@dataclass
class JobView:
    """What the progress line shows, folded from the job's events."""

    step: int = 0
    total: int | None = None
    values: dict[str, Any] = field(default_factory=dict)
    status: str | None = None

    def apply(self, event: JobEventObject) -> None:
        if event.type == "progress":
            self.step = int(event.data.get("step") or 0)
            self.total = event.data.get("total_steps") or self.total
            self.values.update({k: v for k, v in event.data.items() if k in SHOWN and v is not None})
        elif event.type == "status":
            self.status = event.data.get("status", self.status)

    def stats(self) -> str:
        parts = []
        for name in SHOWN:
            if name in self.values:
                value = self.values[name]
                label = "samples/s" if name == "samples_per_s" else name
                shown = f"{value:,.0f}" if name == "samples_per_s" else f"{value:.4g}"
                parts.append(f"{label} {shown}" if name != "samples_per_s" else f"{shown} {label}")
        return "  ".join(parts)


def event_line(event: JobEventObject) -> str:
    """One line for an event worth printing above the bar."""
    return f"{event.created_at:%H:%M:%S} {event.level:<7} {event.type:<16} {event.message}"


class _TwoLineProgress(Progress):
    """The bar (step/total, ETA) on one line and the training values under it, so an 80-column
    terminal shows both whole."""

    def get_renderables(self) -> Iterable[RenderableType]:
        yield self.make_tasks_table(self.tasks)
        for task in self.tasks:
            yield Text("  " + task.fields.get("stats", ""))


def progress_bar(console: Console) -> Progress:
    return _TwoLineProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(bar_width=40),
        MofNCompleteColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        refresh_per_second=8,
    )


def summary(job: JobObject) -> Any:
    """The final table: outcome, duration, steps, the last metrics, what the job produced."""
    duration = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
    rows: list[tuple[str, Any]] = [
        ("job", job.id),
        ("type", job.type),
        ("status", job.status),
        ("duration", f"{duration:.1f} s" if duration is not None else None),
        ("progress", f"{job.progress.step}/{job.progress.total_steps or '?'}"),
    ]
    rows += [(name, value) for name, value in sorted(job.metrics.items())]
    if job.result and job.result.get("model_version"):
        version = job.result["model_version"]
        rows.append(("model version", f"{version['name']} v{version['version']}"))
    if job.error:
        rows.append(("error", f"{job.error.get('code')}: {job.error.get('message')}"))
    return pairs(rows, title="summary")


def follow(maas: Client, job_id: str, console: Console, *, after: str | None = None) -> JobObject:
    """Show the job's live progress until it ends; Ctrl-C asks whether to cancel it (and raises
    ``KeyboardInterrupt`` again when the answer is to leave it running)."""
    console.print(f"following {job_id} (Ctrl-C to cancel or detach)", markup=False)
    view = JobView()
    last = after
    while True:
        try:
            with progress_bar(console) as bar:
                task = bar.add_task("step", total=None, stats="")
                for event in maas.jobs.events(job_id, stream=True, after=last):
                    last = event.id
                    view.apply(event)
                    if event.type not in QUIET_TYPES:
                        bar.console.print(event_line(event), markup=False)
                    bar.update(task, completed=view.step, total=view.total, stats=view.stats())
            return maas.jobs.get(job_id)
        except KeyboardInterrupt:
            try:
                cancel = Confirm.ask(f"\nCancel job {job_id}?", console=console, default=False)
            except (EOFError, KeyboardInterrupt):
                cancel = False
            if not cancel:
                console.print(f"The job keeps running; follow it again with: maas jobs logs -f {job_id}")
                raise
            maas.jobs.cancel(job_id)
            console.print(f"cancel requested for {job_id}")
