"""Training runs for tests: ``python -m torch.distributed.run ... -m training.run`` in a
subprocess, its stdout parsed as the JSON-lines protocol (a line that is not JSON fails the
test), and the training processes a Celery worker has started."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from tests.support.processes import REPO

if TYPE_CHECKING:
    import torch

    from tests.support.processes import Worker

RUN_TIMEOUT_S = 300


@dataclass
class Run:
    returncode: int
    events: list[dict[str, Any]]
    out: Path
    stderr: str

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    @property
    def result(self) -> dict[str, Any]:
        results = self.of_type("result")
        assert self.returncode == 0 and len(results) == 1, self.describe()
        return results[0]

    @property
    def metrics(self) -> dict[str, Any]:
        return self.result["metrics"]

    def params(self) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        return load_file(self.result["files"]["state_dict"])

    def describe(self) -> str:
        return f"exit {self.returncode}; events {self.events[-3:]}; stderr tail:\n{self.stderr[-3000:]}"


def training_spec(kind: str = "ddp", nproc: int = 1, **overrides: Any) -> dict[str, Any]:
    """A short digits MLP run; SGD, so that rounding differences are not amplified as Adam
    would. ``strategy`` and ``hyperparameters`` overrides are merged, others replace."""
    spec: dict[str, Any] = {
        "model": {"arch": "mlp", "hidden": [32, 32]},
        "dataset": {"builtin": "digits"},
        "validation": {"fraction": 0.1},
        "strategy": {"kind": kind, "nproc_per_node": nproc},
        "hyperparameters": {
            "epochs": 1,
            "max_steps": 30,
            "batch_size": 32,
            "lr": 0.05,
            "optimizer": "sgd",
            "momentum": 0.9,
            "seed": 7,
        },
        "checkpoint_every_steps": 1000,
    }
    for key, value in overrides.items():
        merge = key in ("strategy", "hyperparameters")
        spec[key] = {**spec[key], **value} if merge else value
    return spec


def command(spec_path: Path, out: Path, nproc: int | None, *extra: str) -> list[str]:
    """torchrun with ``nproc`` processes, or plain python (no torchrun) when None."""
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)] if nproc else []
    return [sys.executable, *launcher, "-m", "training.run", "--spec", str(spec_path), "--out", str(out), *extra]


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def parse_events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def run_training(directory: Path, spec: dict[str, Any], nproc: int | None, *extra: str, name: str = "run") -> Run:
    directory.mkdir(parents=True, exist_ok=True)
    spec_path = directory / f"{name}.json"
    spec_path.write_text(json.dumps(spec))
    out = directory / name
    done = subprocess.run(
        command(spec_path, out, nproc, *extra),
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    return Run(done.returncode, parse_events(done.stdout), out, done.stderr)


def assert_same_params(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    import torch

    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def running(process: psutil.Process) -> bool:
    """Whether a process is alive (not gone, not a zombie)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def ranks_of(worker: Worker) -> list[psutil.Process]:
    """The training processes (not torchrun or training.launch itself) under a worker: ranks
    torchrun started, or ranks training.launch forked (a launcher's children)."""
    ranks = []
    for process in psutil.Process(worker.process.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmdline = " ".join(process.cmdline())
            torchrun_rank = "training.run" in cmdline and "torch.distributed.run" not in cmdline
            forked_rank = "training.launch" in cmdline and "training.launch" in " ".join(process.parent().cmdline())
            if torchrun_rank or forked_rank:
                ranks.append(process)
    return ranks
