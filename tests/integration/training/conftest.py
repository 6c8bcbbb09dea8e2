"""Real training runs (see tests/support/training_runs.py), and the single-process reference
run the parallel strategies are compared to."""

from __future__ import annotations

import pytest

from tests.support.training_runs import Run, run_training, training_spec


@pytest.fixture(scope="session")
def single_process_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The reference: one process, the whole model, the same global batch."""
    run = run_training(tmp_path_factory.mktemp("reference"), training_spec("ddp", 1), nproc=1, name="single")
    assert run.returncode == 0, run.describe()
    return run
