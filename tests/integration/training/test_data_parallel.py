"""DDP and FSDP on two processes against one process with the same global batch, and the
JSON-lines protocol of a whole torchrun run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.training_runs import Run, assert_same_params, run_training, training_spec


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_training(tmp_path_factory.mktemp("ddp"), training_spec("ddp", 2), nproc=2, name="ddp")


def test_ddp_on_two_processes_ends_with_the_single_process_parameters(ddp_run: Run, single_process_run: Run) -> None:
    assert_same_params(ddp_run.params(), single_process_run.params(), atol=1e-5)
    assert ddp_run.metrics["train_loss"] == pytest.approx(single_process_run.metrics["train_loss"], abs=1e-5)


def test_fsdp_reaches_the_ddp_loss(tmp_path: Path, ddp_run: Run) -> None:
    fsdp = run_training(tmp_path, training_spec("fsdp", 2), nproc=2, name="fsdp")
    for metric in ("train_loss", "val_loss", "val_accuracy"):
        assert fsdp.metrics[metric] == pytest.approx(ddp_run.metrics[metric], abs=1e-4), metric
    assert_same_params(fsdp.params(), ddp_run.params(), atol=1e-5)


def test_rank_0_speaks_the_protocol(ddp_run: Run) -> None:
    progress = ddp_run.of_type("progress")
    assert progress, ddp_run.describe()
    for event in progress:
        assert {"step", "total_steps", "epoch", "loss", "accuracy", "samples_per_s"} <= event.keys()
        assert event["total_steps"] == 30
    assert len(progress) < 30  # every few steps, not every step
    assert progress[-1]["step"] == 30
    checkpoints = ddp_run.of_type("checkpoint")
    # a checkpoint line carries the latest validation, which checkpoint retention ranks by
    last_val = ddp_run.of_type("progress")[-1]
    assert checkpoints == [
        {
            "type": "checkpoint",
            "path": str(ddp_run.out / "checkpoints" / "step-30"),
            "step": 30,
            "val_loss": last_val["val_loss"],
            "val_accuracy": last_val["val_accuracy"],
            "val_step": 30,
        }
    ]
    assert (ddp_run.out / "checkpoints" / "step-30" / "meta.json").is_file()
    result = ddp_run.result  # exactly one: only rank 0 speaks
    assert {"train_loss", "val_loss", "val_accuracy", "onnx_max_abs_diff"} <= result["metrics"].keys()
    assert result["metrics"]["onnx_max_abs_diff"] <= 1e-4
    assert result["classes"] == list(range(10))
    for name in ("model", "curves", "state_dict"):
        assert Path(result["files"][name]).is_file(), name
    assert ddp_run.events[-1]["type"] == "result"
