"""The acceptance run: a CNN on the digits, data parallel on two processes."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

from tests.support.training_runs import run_training


@pytest.mark.slow
def test_a_digits_cnn_on_two_processes_learns_the_digits(tmp_path: Path) -> None:
    spec = {
        "model": {"arch": "cnn", "channels": [32, 64], "kernel_size": 3},
        "dataset": {"builtin": "digits"},
        "validation": {"fraction": 0.2},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"epochs": 15, "batch_size": 32, "lr": 0.001, "optimizer": "adam", "seed": 0},
        "checkpoint_every_steps": 500,
    }
    run = run_training(tmp_path, spec, nproc=2, name="cnn")
    assert run.metrics["val_accuracy"] >= 0.97, run.metrics
    assert run.metrics["onnx_max_abs_diff"] <= 1e-4
    model = onnx.load(run.result["files"]["model"])
    (input_,) = model.graph.input
    assert input_.type.tensor_type.shape.dim[0].dim_param  # the batch dimension is symbolic
    epochs_seen = [e["epoch"] for e in run.of_type("progress") if "val_accuracy" in e]
    assert epochs_seen == list(range(1, 16))
    assert Path(run.result["files"]["curves"]).stat().st_size > 10_000
