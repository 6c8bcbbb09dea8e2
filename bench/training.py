"""Training benchmark: what the platform adds to a torchrun job, and throughput per strategy.

    .venv/bin/python bench/training.py [--epochs 4] [--out bench/results/training.json]

Starts a throwaway ``maas up`` (every service embedded), then for each strategy (ddp, fsdp,
pipeline, hybrid) on 1 and 2 processes:

- submits a digits MLP training job over HTTP and measures POST → running, POST → the first
  progress event (and, from its step and the run's step time, POST → first training step),
  POST → succeeded, and the samples/s the trainer reports;
- runs the same program under plain torchrun, same spec and data, same thread settings, and
  measures its wall time;
- reports the overhead ratio (platform wall time / plain torchrun wall time).

Prints a table and writes JSON. Numbers depend on the machine and its load; compare runs made
on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.local_platform import Platform, local_platform
from job_types.training import child_env, torchrun_command
from training.spec import TrainingSpec

STRATEGIES = ("ddp", "fsdp", "pipeline", "hybrid")


def spec_for(kind: str, nproc: int, epochs: int) -> dict[str, Any]:
    strategy: dict[str, Any] = {"kind": kind, "nproc_per_node": nproc}
    if kind in ("pipeline", "hybrid"):
        strategy |= {"pipeline_stages": nproc, "microbatches": 4}
    return {
        "model": {"arch": "mlp", "hidden": [256, 256, 256]},
        "dataset": {"builtin": "digits"},
        "validation": {"fraction": 0.1},
        "strategy": strategy,
        "hyperparameters": {"epochs": epochs, "batch_size": 64, "lr": 0.001, "optimizer": "adam", "seed": 0},
        "checkpoint_every_steps": 10_000,
    }


def _seconds(later: str, earlier: str) -> float:
    return (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()


def on_platform(maas: Platform, spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    job = maas.call("POST", "/v1/jobs", {"type": "training", "spec": spec})
    while job["status"] not in ("succeeded", "failed", "canceled"):
        job = maas.call("GET", f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=30"})
    wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"{spec['strategy']}: job {job['status']}: {job['error']}")
    events = maas.call("GET", f"/v1/jobs/{job['id']}/events?limit=1000")["data"]
    running = next(e for e in events if e["type"] == "status" and e["data"]["status"] == "running")
    first = next(e for e in events if e["type"] == "progress")
    metrics = job["result"]["metrics"]
    step_s = spec["hyperparameters"]["batch_size"] / metrics["samples_per_s"]
    to_first_progress = _seconds(first["created_at"], job["created_at"])
    return {
        "job_id": job["id"],
        "post_to_running_s": round(_seconds(running["created_at"], job["created_at"]), 3),
        "post_to_first_progress_s": round(to_first_progress, 3),
        "first_progress_step": first["data"]["step"],
        "post_to_first_step_s": round(to_first_progress - (first["data"]["step"] - 1) * step_s, 3),
        "platform_wall_s": round(wall, 3),
        "samples_per_s": round(metrics["samples_per_s"], 1),
        "val_accuracy": metrics["val_accuracy"],
    }


def plain_torchrun(spec: dict[str, Any]) -> dict[str, Any]:
    parsed = TrainingSpec.model_validate(spec)
    with tempfile.TemporaryDirectory(prefix="maas-bench-plain-") as tmp:
        (Path(tmp) / "spec.json").write_text(json.dumps(spec))
        command = torchrun_command(parsed, ["--spec", str(Path(tmp) / "spec.json"), "--out", str(Path(tmp) / "out")])
        started = time.perf_counter()
        done = subprocess.run(command, env=child_env(1), capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - started
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = next((m for m in lines if m.get("type") == "result"), None)
    if done.returncode != 0 or result is None:
        raise RuntimeError(f"plain torchrun failed: {done.stderr[-2000:]}")
    return {"plain_wall_s": round(wall, 3), "plain_samples_per_s": round(result["metrics"]["samples_per_s"], 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "training.json")
    args = parser.parse_args()
    rows = []
    with local_platform(worker_concurrency="1") as maas:
        for kind in STRATEGIES:
            for nproc in (1, 2):
                spec = spec_for(kind, nproc, args.epochs)
                row = {"strategy": kind, "nproc": nproc, **on_platform(maas, spec), **plain_torchrun(spec)}
                row["overhead_ratio"] = round(row["platform_wall_s"] / row["plain_wall_s"], 3)
                rows.append(row)
                print(f"  {kind:<9} {nproc}  done", flush=True)
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "benchmark": "training",
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform()},
        "workload": spec_for("ddp", 1, args.epochs),
        "rows": rows,
    }, indent=2) + "\n")  # fmt: skip
    print(f"\nwrote {args.out}")


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        ("strategy", "strategy", "{}"), ("nproc", "procs", "{}"), ("post_to_running_s", "POST→running s", "{:.2f}"),
        ("post_to_first_step_s", "POST→1st step s", "{:.2f}"), ("samples_per_s", "samples/s", "{:.0f}"),
        ("plain_samples_per_s", "plain samples/s", "{:.0f}"), ("platform_wall_s", "platform s", "{:.1f}"),
        ("plain_wall_s", "torchrun s", "{:.1f}"), ("overhead_ratio", "overhead x", "{:.2f}"),
    ]  # fmt: skip
    print("  ".join(f"{title:>15}" for _, title, _ in columns))
    for row in rows:
        print("  ".join(f"{fmt.format(row[key]):>15}" for key, _, fmt in columns))


if __name__ == "__main__":
    main()
