"""The training options in real torchrun runs: gradient accumulation and clipping give the
single-process update on DDP and FSDP (clipping by the whole model's norm, not a shard's), a
warm-up schedule is followed, early stopping ends the run and exports the best weights, and
bf16 autocast trains on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.training_runs import Run, assert_same_params, run_training, training_spec

OPTIONS = {"grad_clip_norm": 0.5, "lr_schedule": {"decay": "cosine", "warmup_steps": 5, "min_lr_ratio": 0.1}}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """One process, no accumulation: the update the others must reproduce."""
    run = run_training(tmp_path_factory.mktemp("options"), training_spec("ddp", 1, hyperparameters=OPTIONS), 1)
    assert run.returncode == 0, run.describe()
    return run


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_accumulation_and_clipping_give_the_single_process_update(tmp_path: Path, reference: Run, kind: str) -> None:
    spec = training_spec(kind, 2, hyperparameters={**OPTIONS, "grad_accumulation_steps": 2})
    run = run_training(tmp_path, spec, 2, name=kind)
    assert run.returncode == 0, run.describe()
    assert_same_params(run.params(), reference.params(), atol=1e-5)


def test_clipping_and_the_schedule_change_the_run(tmp_path: Path, reference: Run) -> None:
    plain = run_training(tmp_path, training_spec("ddp", 1), 1, name="plain")
    assert plain.returncode == 0, plain.describe()
    different = [n for n, v in plain.params().items() if not (v - reference.params()[n]).abs().max() < 1e-4]
    assert different  # the options did something (the test above would pass on no-ops otherwise)


@pytest.mark.slow
def test_early_stopping_stops_and_exports_the_best_weights(tmp_path: Path) -> None:
    # a learning rate this high makes the validation loss bounce: it stops well before 40 epochs
    spec = training_spec(
        "ddp",
        2,
        hyperparameters={
            "epochs": 40,
            "max_steps": None,
            "batch_size": 256,
            "lr": 0.5,
            "early_stopping": {"metric": "val_loss", "patience": 2},
        },
    )
    run = run_training(tmp_path, spec, 2)
    assert run.returncode == 0, run.describe()
    validations = [e for e in run.of_type("progress") if "val_loss" in e]
    steps_per_epoch = 1617 // 256
    assert run.metrics["steps"] < 40 * steps_per_epoch
    best = min(validations, key=lambda e: e["val_loss"])
    assert run.metrics["best_step"] == best["step"]
    assert run.metrics["val_loss"] == pytest.approx(best["val_loss"], abs=1e-6)  # the export is the best's
    # it stopped after `patience` evaluations without improvement
    assert validations[-1]["step"] - best["step"] == 2 * steps_per_epoch


def test_bf16_autocast_trains_on_cpu(tmp_path: Path) -> None:
    spec = training_spec("ddp", 2, hyperparameters={"precision": "bf16", "epochs": 3, "max_steps": None})
    run = run_training(tmp_path, spec, 2)
    assert run.returncode == 0, run.describe()
    assert run.metrics["val_accuracy"] > 0.8
