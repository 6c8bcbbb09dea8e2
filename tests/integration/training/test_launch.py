"""``training.launch``: ranks forked after the imports and the data loading, with torchrun's
environment, train exactly as torchrun's ranks do; a stopped launcher stops its ranks."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import torch

from tests.support.processes import REPO
from tests.support.training_runs import RUN_TIMEOUT_S, parse_events, run_training, subprocess_env, training_spec
from training.launch import rank_env

SPEC = training_spec("ddp", 2)


def launch(spec_path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "training.launch", "--nproc-per-node", "2", "--spec", str(spec_path),
            "--out", str(out), *extra]  # fmt: skip


def test_the_ranks_get_what_torchrun_would_set() -> None:
    env = rank_env(1, 2, 29500)
    assert {k: env[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK")} == {
        "RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "GROUP_RANK": "0",
    }  # fmt: skip
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["MASTER_PORT"] == "29500"


def test_launched_ranks_end_with_torchruns_parameters(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(SPEC))
    done = subprocess.run(launch(spec_path, tmp_path / "launched"), cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    events = parse_events(done.stdout)  # rank 0 alone speaks, the protocol only
    (result,) = [e for e in events if e["type"] == "result"]
    assert events[-1] is result
    torchrun = run_training(tmp_path, SPEC, 2, name="torchrun")
    from safetensors.torch import load_file

    launched = load_file(result["files"]["state_dict"])
    for name, value in torchrun.params().items():
        assert torch.equal(value, launched[name]), name


def test_a_stopped_launcher_stops_its_ranks(tmp_path: Path) -> None:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(training_spec("ddp", 2, hyperparameters={"epochs": 500, "max_steps": None})))
    process = subprocess.Popen(
        launch(spec_path, tmp_path / "out", "--report-every", "1"),
        cwd=REPO,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert json.loads(process.stdout.readline())["type"] == "progress"  # training
        ranks = psutil.Process(process.pid).children()
        assert len(ranks) == 2
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 1
        _, alive = psutil.wait_procs(ranks, timeout=30)
        assert not alive
    finally:
        if process.poll() is None:
            process.kill()
