"""Data parallel x pipeline: four processes, two replicas of a two-stage pipeline."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.training_runs import Run, assert_same_params, run_training, training_spec


@pytest.mark.slow
def test_two_replicas_of_two_stages_train_like_one_process(tmp_path: Path, single_process_run: Run) -> None:
    spec = training_spec("hybrid", 4, strategy={"pipeline_stages": 2, "microbatches": 2})
    run = run_training(tmp_path, spec, nproc=4, name="hybrid")
    for metric in ("train_loss", "val_loss", "val_accuracy"):
        assert run.metrics[metric] == pytest.approx(single_process_run.metrics[metric], abs=1e-4), metric
    assert_same_params(run.params(), single_process_run.params(), atol=1e-5)
