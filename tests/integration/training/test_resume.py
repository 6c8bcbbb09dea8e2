"""A run killed after a checkpoint and resumed with --resume ends where an uninterrupted
run ends: same parameters, bit for bit (dropout included, so the RNG state counts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from tests.support.training_runs import (
    REPO,
    RUN_TIMEOUT_S,
    command,
    parse_events,
    run_training,
    subprocess_env,
    training_spec,
)


def spec_for(kind: str) -> dict[str, object]:
    return training_spec(
        kind,
        2,
        model={"arch": "mlp", "hidden": [32, 32], "dropout": 0.2},
        hyperparameters={"epochs": 2, "max_steps": None, "optimizer": "adam", "lr": 0.003, "momentum": 0.0},
        checkpoint_every_steps=20,
        checkpoint_every_seconds=0,  # by steps alone, so that step 20 checkpoints
    )


SPEC = spec_for("ddp")


def kill_after_first_checkpoint(directory: Path, spec: dict[str, object] = SPEC) -> dict[str, object]:
    """Start the run, and SIGKILL its whole process tree once it reports a checkpoint (written
    in the background while the steps went on)."""
    spec_path = directory / "killed.json"
    spec_path.write_text(json.dumps(spec))
    process = subprocess.Popen(
        command(spec_path, directory / "killed", 2),
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            (event,) = parse_events(line)
            if event["type"] == "checkpoint":
                os.killpg(process.pid, signal.SIGKILL)
                return event
        raise AssertionError("the run ended without a checkpoint")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=RUN_TIMEOUT_S)


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_a_killed_run_resumes_to_the_same_parameters(tmp_path: Path, kind: str) -> None:
    spec = spec_for(kind)
    checkpoint = kill_after_first_checkpoint(tmp_path, spec)
    assert checkpoint["step"] == 20
    assert not (tmp_path / "killed" / "model.safetensors").exists()  # it really did not finish

    resumed = run_training(tmp_path, spec, 2, "--resume", str(checkpoint["path"]), name="resumed")
    assert resumed.returncode == 0, resumed.describe()
    assert min(e["step"] for e in resumed.of_type("progress")) > 20  # it continued, it did not restart
    whole = run_training(tmp_path, spec, 2, name="whole")

    expected = whole.params()
    for name, value in resumed.params().items():
        assert torch.equal(value, expected[name]), name
    assert resumed.metrics["val_loss"] == whole.metrics["val_loss"]


def test_a_run_asked_to_stop_checkpoints_and_resumes_to_the_same_parameters(tmp_path: Path) -> None:
    stop = tmp_path / "stop"
    stop.touch()  # asked before the first step: it stops at the first step where the ranks sync
    stopped = run_training(tmp_path, SPEC, 2, "--stop-file", str(stop), name="stopped")
    assert stopped.returncode == 0, stopped.describe()
    (checkpoint,) = stopped.of_type("checkpoint")
    (preempted,) = stopped.of_type("preempted")
    assert 0 < preempted["step"] == checkpoint["step"] < 20  # not a scheduled checkpoint step
    assert not stopped.of_type("result")

    resumed = run_training(tmp_path, SPEC, 2, "--resume", str(checkpoint["path"]), name="resumed")
    whole = run_training(tmp_path, SPEC, 2, name="whole")
    expected = whole.params()
    for name, value in resumed.params().items():
        assert torch.equal(value, expected[name]), name
