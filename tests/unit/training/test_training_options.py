"""The training options (learning-rate schedule, gradient clipping and accumulation, mixed
precision, early stopping, checkpoint cadence): each misuse is refused at its own field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from training.spec import TrainingSpec, check_dataset_fits, precision_problems


def spec_with(strategy: dict[str, Any] | None = None, **hyperparameters: Any) -> dict[str, Any]:
    return {
        "model": {"arch": "mlp", "hidden": [8, 8]},
        "dataset": {"builtin": "digits"},
        "strategy": strategy or {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"batch_size": 32, **hyperparameters},
    }


def pointers(data: dict[str, Any]) -> set[str]:
    with pytest.raises(ValidationError) as info:
        TrainingSpec.model_validate(data)
    return {"/" + "/".join(str(p) for p in e["loc"]) for e in info.value.errors()}


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        # 32 rows / 2 processes = 16 per process: 3 chunks do not divide it
        (spec_with(grad_accumulation_steps=3), "/hyperparameters/grad_accumulation_steps"),
        (spec_with(grad_accumulation_steps=0), "/hyperparameters/grad_accumulation_steps"),
        (
            spec_with({"kind": "pipeline", "nproc_per_node": 2}, grad_accumulation_steps=2),
            "/hyperparameters/grad_accumulation_steps",
        ),
        (spec_with(lr_schedule={"warmup_steps": 50}, max_steps=50), "/hyperparameters/lr_schedule/warmup_steps"),
        (spec_with(lr_schedule={"warmup_steps": -1}), "/hyperparameters/lr_schedule/warmup_steps"),
        (spec_with(lr_schedule={"decay": "step"}), "/hyperparameters/lr_schedule/decay"),
        (spec_with(lr_schedule={"min_lr_ratio": 1.5}), "/hyperparameters/lr_schedule/min_lr_ratio"),
        (spec_with(grad_clip_norm=0), "/hyperparameters/grad_clip_norm"),
        (spec_with(precision="fp8"), "/hyperparameters/precision"),
        (spec_with({"kind": "pipeline", "nproc_per_node": 2}, precision="bf16"), "/hyperparameters/precision"),
        (spec_with(early_stopping={"metric": "val_loss", "mode": "max"}), "/hyperparameters/early_stopping/mode"),
        (spec_with(early_stopping={"metric": "train_loss"}), "/hyperparameters/early_stopping/metric"),
        (spec_with(early_stopping={"patience": 0}), "/hyperparameters/early_stopping/patience"),
        ({**spec_with(), "checkpoint_every_seconds": -1}, "/checkpoint_every_seconds"),
    ],
)
def test_a_misused_option_is_refused_at_its_field(data: dict[str, Any], expected: str) -> None:
    assert pointers(data) == {expected}


def test_options_that_fit_are_taken() -> None:
    spec = TrainingSpec.model_validate(
        spec_with(
            grad_accumulation_steps=4,
            lr_schedule={"decay": "linear", "warmup_steps": 10},
            grad_clip_norm=1.0,
            precision="bf16",
            early_stopping={"metric": "val_accuracy", "patience": 2},
        )
    )
    hp = spec.hyperparameters
    assert hp.early_stopping is not None and hp.early_stopping.mode == "max"
    assert spec.checkpoint_every_seconds == 300 and spec.checkpoint_every_steps == 100
    assert check_dataset_fits(spec, None) == []


def test_a_warm_up_longer_than_the_run_is_refused_against_the_data() -> None:
    # digits: 1797 rows, 1617 after the 10% validation split; 1617 // 32 = 50 steps an epoch, 2 epochs
    spec = TrainingSpec.model_validate(spec_with(epochs=2, lr_schedule={"warmup_steps": 100}))
    (problem,) = check_dataset_fits(spec, None)
    assert problem["pointer"] == "/hyperparameters/lr_schedule/warmup_steps" and "100 steps" in problem["detail"]
    fits = TrainingSpec.model_validate(spec_with(epochs=2, lr_schedule={"warmup_steps": 99}))
    assert check_dataset_fits(fits, None) == []


def test_fp16_needs_cuda_workers_and_bf16_does_not() -> None:
    fp16 = TrainingSpec.model_validate(spec_with(precision="fp16"))
    (problem,) = precision_problems(fp16, cuda=False)
    assert problem["pointer"] == "/hyperparameters/precision"
    assert precision_problems(fp16, cuda=True) == []
    assert precision_problems(TrainingSpec.model_validate(spec_with(precision="bf16")), cuda=False) == []


def test_every_option_has_a_description() -> None:
    schema = TrainingSpec.model_json_schema()
    hp = schema["$defs"]["HyperparametersSpec"]["properties"]
    for name in ("lr_schedule", "grad_clip_norm", "grad_accumulation_steps", "precision", "early_stopping"):
        assert hp[name].get("description"), name
    for part in ("LRScheduleSpec", "EarlyStoppingSpec"):
        assert all(field.get("description") for field in schema["$defs"][part]["properties"].values()), part
    assert schema["properties"]["checkpoint_every_seconds"]["description"]
