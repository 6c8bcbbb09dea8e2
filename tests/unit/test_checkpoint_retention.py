"""Which checkpoints a job keeps: the newest ``keep_last`` and the best by a validation metric,
and the spec that asks for it."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from job_types.checkpoint_retention import CheckpointSeen, best_checkpoint, kept_checkpoints, retention_reason
from training.loop import Progress, _latest_validation
from training.spec import CheckpointsSpec, TrainingSpec


def seen(*metrics: dict) -> list[CheckpointSeen]:
    """Checkpoints c0, c1, … oldest first, with the given metrics."""
    return [CheckpointSeen(f"c{i}", m) for i, m in enumerate(metrics)]


def policy(keep_last: int, metric: str | None = None) -> CheckpointsSpec:
    return CheckpointsSpec.model_validate({"keep_last": keep_last, "keep_best": metric and {"metric": metric}})


def test_the_newest_keep_last_are_kept() -> None:
    checkpoints = seen(*({"val_loss": 1.0 / (i + 1)} for i in range(6)))
    assert kept_checkpoints(checkpoints, policy(3)) == {"c3", "c4", "c5"}


def test_fewer_than_keep_last_keeps_them_all() -> None:
    assert kept_checkpoints(seen({}, {}), policy(3, "val_loss")) == {"c0", "c1"}
    assert kept_checkpoints([], policy(3, "val_loss")) == set()


def test_the_best_outside_the_newest_is_kept_as_well() -> None:
    checkpoints = seen({"val_accuracy": 0.5}, {"val_accuracy": 0.9}, {"val_accuracy": 0.7}, {"val_accuracy": 0.8})
    assert kept_checkpoints(checkpoints, policy(2, "val_accuracy")) == {"c1", "c2", "c3"}
    # the mode follows the metric: the lowest loss
    losses = seen({"val_loss": 0.2}, {"val_loss": 0.1}, {"val_loss": 0.3}, {"val_loss": 0.4})
    assert kept_checkpoints(losses, policy(1, "val_loss")) == {"c1", "c3"}


def test_a_best_among_the_newest_keeps_no_more() -> None:
    checkpoints = seen({"val_accuracy": 0.5}, {"val_accuracy": 0.6}, {"val_accuracy": 0.9}, {"val_accuracy": 0.8})
    assert kept_checkpoints(checkpoints, policy(2, "val_accuracy")) == {"c2", "c3"}


def test_on_a_tie_the_newest_best_wins() -> None:
    checkpoints = seen({"val_loss": 0.1}, {"val_loss": 0.1}, {"val_loss": 0.5}, {"val_loss": 0.6})
    assert best_checkpoint(checkpoints, "val_loss", "min") == checkpoints[1]
    assert kept_checkpoints(checkpoints, policy(1, "val_loss")) == {"c1", "c3"}


def test_checkpoints_without_the_metric_are_never_the_best() -> None:
    checkpoints = seen({}, {"val_accuracy": 0.4}, {"val_accuracy": float("nan")}, {"val_loss": 0.1}, {})
    assert kept_checkpoints(checkpoints, policy(1, "val_accuracy")) == {"c1", "c4"}
    assert best_checkpoint(seen({}, {"val_loss": None}), "val_loss", "min") is None
    assert kept_checkpoints(seen({}, {}, {}), policy(1, "val_loss")) == {"c2"}


def test_without_keep_best_the_metrics_do_not_matter() -> None:
    checkpoints = seen({"val_accuracy": 1.0}, {"val_accuracy": 0.1}, {"val_accuracy": 0.2})
    assert kept_checkpoints(checkpoints, policy(1)) == {"c2"}


def test_the_reason_names_the_policy() -> None:
    assert retention_reason(policy(2)) == "checkpoint retention: not among the newest 2"
    assert retention_reason(policy(2, "val_loss")).endswith("nor the one with the lowest val_loss")
    assert retention_reason(policy(2, "val_accuracy")).endswith("nor the one with the highest val_accuracy")


def test_the_spec_defaults_and_bounds() -> None:
    spec = TrainingSpec.model_validate({"model": {"arch": "mlp"}, "dataset": {"builtin": "digits"}})
    assert spec.checkpoints.keep_last == 3 and spec.checkpoints.keep_best is None
    best = CheckpointsSpec.model_validate({"keep_best": {"metric": "val_accuracy"}}).keep_best
    assert best is not None and best.mode == "max"
    for bad in ({"keep_last": 0}, {"keep_last": 1001}, {"keep_best": {"metric": "loss"}}, {"keep_best": {}},
                {"keep_every": 2}):  # fmt: skip
        with pytest.raises(ValidationError):
            CheckpointsSpec.model_validate(bad)


def test_a_checkpoint_carries_the_latest_validation() -> None:
    progress = Progress()
    assert _latest_validation(progress.history) == {}
    progress.history = [
        {"kind": "val", "step": 10, "epoch": 1.0, "loss": 0.5, "accuracy": 0.8},
        {"kind": "train", "step": 12, "epoch": 1.2, "loss": 0.4, "accuracy": 0.9},
    ]
    assert _latest_validation(progress.history) == {"val_loss": 0.5, "val_accuracy": 0.8, "val_step": 10}
