"""The loop's pure parts (the step plan, its saved state) and the entry point's
error mapping and argument parsing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from training.checkpoint import CheckpointError
from training.data import DatasetError
from training.loop import Progress, StepSchedule, TrainingFailure, improved, make_schedule
from training.run import error_event, parse_args
from training.spec import EarlyStoppingSpec, TrainingSpec


def spec(**hyperparameters: object) -> TrainingSpec:
    return TrainingSpec.model_validate(
        {
            "model": {"arch": "mlp"},
            "dataset": {"builtin": "digits"},
            "hyperparameters": {"batch_size": 10, **hyperparameters},
            "checkpoint_every_steps": 7,
        }
    )


def test_the_plan_counts_full_batches_per_epoch() -> None:
    plan = make_schedule(105, spec(epochs=3))
    assert plan.steps_per_epoch == 10 and plan.total_steps == 30
    assert plan.checkpoint_every == 7


def test_max_steps_caps_the_run() -> None:
    assert make_schedule(105, spec(epochs=3, max_steps=12)).total_steps == 12
    assert make_schedule(105, spec(epochs=1, max_steps=1000)).total_steps == 10


def test_reports_are_every_few_steps() -> None:
    assert make_schedule(105, spec(epochs=3)).report_every == 5
    assert make_schedule(10_000, spec(epochs=10)).report_every == 50
    assert make_schedule(105, spec(epochs=3), report_every=4).report_every == 4


def test_the_plan_reports_at_epoch_ends_and_checkpoints_at_the_end() -> None:
    plan = StepSchedule(steps_per_epoch=10, total_steps=25, report_every=4, checkpoint_every=7)
    assert [s for s in range(1, 26) if plan.report_due(s)] == [4, 8, 10, 12, 16, 20, 24, 25]
    assert [s for s in range(1, 26) if plan.checkpoint_candidate(s)] == [7, 14, 21, 25]
    assert all(plan.sync_due(s) for s in range(1, 26) if plan.report_due(s) or plan.checkpoint_candidate(s))


def test_a_checkpoint_waits_for_both_the_steps_and_the_seconds() -> None:
    plan = StepSchedule(steps_per_epoch=10, total_steps=100, report_every=4, checkpoint_every=7, checkpoint_seconds=60)
    assert not plan.checkpoint_due(7, last_checkpoint=0, seconds_since=10)  # steps came, the time did not
    assert not plan.checkpoint_due(6, last_checkpoint=0, seconds_since=600)  # the time came, the steps did not
    assert plan.checkpoint_due(8, last_checkpoint=0, seconds_since=61)  # both: whichever came later
    assert not plan.checkpoint_due(12, last_checkpoint=8, seconds_since=600)
    assert plan.checkpoint_due(100, last_checkpoint=99, seconds_since=0)  # the last step always does


def test_early_stopping_counts_only_real_improvements() -> None:
    loss = EarlyStoppingSpec(metric="val_loss", min_delta=0.01)
    assert improved(1.0, None, loss)
    assert improved(0.98, 1.0, loss) and not improved(0.995, 1.0, loss) and not improved(1.2, 1.0, loss)
    accuracy = EarlyStoppingSpec(metric="val_accuracy")
    assert accuracy.mode == "max" and improved(0.9, 0.8, accuracy) and not improved(0.8, 0.8, accuracy)


def test_progress_survives_the_checkpoint_meta_round_trip() -> None:
    progress = Progress(step=5, window=[1.0, 2.0, 3.0], history=[{"kind": "train", "epoch": 0.5, "loss": 1.0}])
    progress.add([1.0, 1.0, 1.0], seconds=0.5)
    meta = json.loads(json.dumps(progress.to_meta(world_size=2)))
    assert meta["world_size"] == 2
    assert Progress.from_meta(meta) == progress


@pytest.mark.parametrize(
    ("exc", "code", "every_rank"),
    [
        (DatasetError("/dataset/label_column", "no column 'y'"), "bad_dataset", True),
        (TrainingFailure("nan_loss", "loss is nan"), "nan_loss", True),
        (CheckpointError("no meta.json"), "bad_checkpoint", True),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"), "out_of_memory", False),
        (RuntimeError("boom"), "internal", False),
    ],
)
def test_exceptions_map_to_error_codes(exc: Exception, code: str, every_rank: bool) -> None:
    event, on_every_rank = error_event(exc)
    assert event["type"] == "error" and event["code"] == code and event["message"]
    assert on_every_rank is every_rank


def test_a_dataset_error_carries_its_pointer() -> None:
    event, _ = error_event(DatasetError("/dataset/label_column", "no column 'y'"))
    assert event["pointer"] == "/dataset/label_column"


def test_a_spec_error_lists_pointers() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingSpec.model_validate({"model": {"arch": "mlp", "hidden": [0]}, "dataset": {"builtin": "digits"}})
    event, _ = error_event(info.value)
    assert event["code"] == "bad_spec"
    assert [e["pointer"] for e in event["errors"]] == ["/model/hidden/0"]


def test_the_command_line() -> None:
    args = parse_args(["--spec", "s.json", "--out", "o", "--data", "d.npz", "--resume", "o/checkpoints/step-5"])
    assert args.spec == Path("s.json") and args.out == Path("o") and args.data == Path("d.npz")
    assert args.resume == Path("o/checkpoints/step-5") and args.val_data is None
    with pytest.raises(SystemExit):
        parse_args(["--spec", "s.json"])
