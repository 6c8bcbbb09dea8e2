"""Pipeline model parallel on two processes (two stages, both schedules) against the
unsplit model on one process."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.training_runs import Run, assert_same_params, run_training, training_spec


@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
def test_two_stages_train_like_the_unsplit_model(tmp_path: Path, schedule: str, single_process_run: Run) -> None:
    spec = training_spec("pipeline", 2, strategy={"pipeline_stages": 2, "microbatches": 4, "schedule": schedule})
    run = run_training(tmp_path, spec, nproc=2, name=schedule)
    for metric in ("train_loss", "val_loss", "val_accuracy"):
        assert run.metrics[metric] == pytest.approx(single_process_run.metrics[metric], abs=1e-5), metric
    assert_same_params(run.params(), single_process_run.params(), atol=1e-5)
    assert run.metrics["onnx_max_abs_diff"] <= 1e-4
