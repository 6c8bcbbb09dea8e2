"""Checkpoint retention: which of a job's checkpoints to keep once a new one is uploaded.

A spec's ``checkpoints`` (``training.spec.CheckpointsSpec``) keeps the newest ``keep_last``
and, with ``keep_best``, the best one by a validation metric (lowest ``val_loss``, highest
``val_accuracy``), over every attempt of the job. :func:`kept_checkpoints` is the pure choice;
:func:`prune_checkpoints` applies it through the ``JobContext``: each other checkpoint's object
is deleted from the store and its artifact row marked deleted, with a job event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from training.spec import CheckpointsSpec

if TYPE_CHECKING:
    from core.models import Artifact
    from job_types.base import JobContext


@dataclass(frozen=True)
class CheckpointSeen:
    """A live checkpoint as the choice sees it: its id and the metrics it was recorded with."""

    id: str
    metrics: Mapping[str, Any]


def metric_value(metrics: Mapping[str, Any], metric: str) -> float | None:
    """The checkpoint's ``metric`` as a finite number, or None when it has none (written before the
    first validation) or a NaN."""
    value = metrics.get(metric)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def best_checkpoint(checkpoints: Sequence[CheckpointSeen], metric: str, mode: str) -> CheckpointSeen | None:
    """The best of ``checkpoints`` (oldest first) by ``metric`` (``mode`` ``min`` or ``max``); on a
    tie the newest wins. None when none has the metric."""
    best: tuple[float, CheckpointSeen] | None = None
    for checkpoint in checkpoints:
        value = metric_value(checkpoint.metrics, metric)
        if value is None:
            continue
        if best is None or (value <= best[0] if mode == "min" else value >= best[0]):
            best = (value, checkpoint)
    return None if best is None else best[1]


def kept_checkpoints(checkpoints: Sequence[CheckpointSeen], policy: CheckpointsSpec) -> set[str]:
    """The ids to keep of ``checkpoints`` (every live one of the job, oldest first): the newest
    ``keep_last`` and, with ``keep_best``, the best by its metric (which may be among them)."""
    kept = {c.id for c in checkpoints[-policy.keep_last :]}
    if policy.keep_best is not None:
        best = best_checkpoint(checkpoints, policy.keep_best.metric, policy.keep_best.mode)
        if best is not None:
            kept.add(best.id)
    return kept


def retention_reason(policy: CheckpointsSpec) -> str:
    reason = f"checkpoint retention: not among the newest {policy.keep_last}"
    if policy.keep_best is not None:
        best = "lowest" if policy.keep_best.mode == "min" else "highest"
        reason += f" nor the one with the {best} {policy.keep_best.metric}"
    return reason


def prune_checkpoints(ctx: JobContext, policy: CheckpointsSpec) -> list[Artifact]:
    """Delete the job's checkpoints that ``policy`` does not keep; the ones deleted."""
    live = ctx.checkpoints()
    recorded = ctx.checkpoint_data()
    seen = [CheckpointSeen(a.id, recorded.get(a.id, {})) for a in live]
    kept = kept_checkpoints(seen, policy)
    reason = retention_reason(policy)
    doomed = [a for a in live if a.id not in kept]
    for artifact in doomed:
        ctx.delete_artifact(artifact, reason)
    return doomed
