"""Training benchmark: the platform with its default settings against a plain hand-written loop.

    .venv/bin/python bench/training.py [--quick] [--only WORKLOAD ...] [--out bench/results/training.json]

A quick run writes ``bench/results/training-quick.json`` unless ``--out`` says otherwise (it never
replaces the full run's file); a full run of some workloads (``--only``) merges its rows into the
existing file, each row labelled with the run that measured it (``measured``).

Starts a throwaway ``maas up`` (every service embedded), then for each workload runs, side by
side in one run:

- the plain loop: ``torchrun --standalone --nproc_per_node 2 bench/plain_ddp.py`` (same model,
  data, global batch, optimizer and learning rate; DistributedSampler, DDP/FSDP/1F1B, no
  checkpoints, the weights saved at the end), its wall time launch → exit and the samples/s of
  its training loop;
- the same training as a platform job (POST /v1/jobs with the default settings: checkpoints,
  validation each epoch, ONNX export and parity check, uploads, registration-free), its wall time
  POST → terminal status and the samples/s the trainer reports, and where that wall time went,
  from the job's events and the run's own timings: queue (POST → running), start (running →
  first step), training (first → last step, checkpoints and validations included), checkpoints
  (what the steps waited for them), validation (the evaluation at each epoch's end, which the plain
  loop does once, after training; the platform's samples/s leaves it out, its wall time does
  not), export (rank 0's evaluation, ONNX export, parity check, curves) and finish
  (the rest: artifact uploads, the last checkpoint's upload, process exit, the status change).

Workloads (each ≥ 30 s of plain training on a quiet 2-core machine; ``--quick`` runs a tenth):
DDP x2 and FSDP x2 on the digits CNN (channels [32, 64]), a 2-stage 1F1B pipeline on the digits
MLP [256, 256, 256], and the text-encoder fine-tune (``TEXT_WORKLOAD``: MiniLM, DDP x2, against
``bench/plain_text.py``, which tokenizes with the platform's own ``training.text_data`` and
splits with its seeded split; the platform job gets ``bench.plain_text.platform_spec`` on an
upload of ``bench.plain_text.dataset_csv``). ``--only NAME`` (repeatable) runs some rows.
Targets: samples/s ≥ 0.95 of plain, wall ≤ 1.10 of plain.
Numbers depend on the machine and its load: compare rows of one run, not runs.
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
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import plain_text
from bench.local_platform import Platform, local_platform
from job_types.training import child_env

REPO = Path(__file__).resolve().parents[1]
MODELS = {"cnn": {"arch": "cnn", "channels": [32, 64]}, "mlp": {"arch": "mlp", "hidden": [256, 256, 256]}}
# name: (strategy, model, epochs of a full run)
WORKLOADS = {
    "ddp x2 cnn": ("ddp", "cnn", 360),
    "fsdp x2 cnn": ("fsdp", "cnn", 90),
    "pipeline x2 mlp": ("pipeline", "mlp", 240),
}
BATCH, LR, SEED = 64, 0.001, 0


@dataclass(frozen=True)
class TextWorkload:
    """The text-encoder fine-tune: MiniLM, 32 tokens, embeddings and 4 lower layers frozen."""

    name: str = "text x2 minilm"
    epochs: int = 12  # of 216 training texts: 13 steps of 16 an epoch
    per_source: int = 80
    batch_size: int = 16
    lr: float = 5e-4
    max_length: int = 32
    freeze_layers: int = 4

    def plain_args(self, epochs: int) -> list[str]:
        return [
            str(REPO / "bench" / "plain_text.py"), "--epochs", str(epochs), "--per-source", str(self.per_source),
            "--batch-size", str(self.batch_size), "--lr", str(self.lr), "--seed", str(SEED),
            "--max-length", str(self.max_length), "--freeze-layers", str(self.freeze_layers),
        ]  # fmt: skip

    def platform_spec(self, maas: Platform, epochs: int) -> dict[str, Any]:
        upload = maas.call(
            "POST",
            "/v1/files?purpose=dataset&filename=bench-text.csv",
            raw=plain_text.dataset_csv(self.per_source),
            headers={"Content-Type": "application/octet-stream"},
        )
        return plain_text.platform_spec(
            upload["id"], epochs, self.batch_size, self.lr, SEED, self.max_length, self.freeze_layers
        )


TEXT_WORKLOAD = TextWorkload()


def platform_spec(kind: str, model: str, epochs: int) -> dict[str, Any]:
    """The job a user would POST: everything else at its default (checkpoints included)."""
    return {
        "model": MODELS[model],
        "dataset": {"builtin": "digits"},
        "strategy": {"kind": kind, "nproc_per_node": 2},
        "hyperparameters": {"epochs": epochs, "batch_size": BATCH, "lr": LR, "optimizer": "adam", "seed": SEED},
    }


def _at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def on_platform(maas: Platform, spec: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    job = maas.call("POST", "/v1/jobs", {"type": "training", "spec": spec})
    while job["status"] not in ("succeeded", "failed", "canceled"):
        job = maas.call("GET", f"/v1/jobs/{job['id']}", headers={"Prefer": "wait=30"})
    wall = time.perf_counter() - started
    if job["status"] != "succeeded":
        raise RuntimeError(f"{spec['strategy']}: job {job['status']}: {job['error']}")
    events = maas.call("GET", f"/v1/jobs/{job['id']}/events?limit=1000")["data"]
    status_at = {e["data"]["status"]: _at(e["created_at"]) for e in events if e["type"] == "status"}
    created, running, done = _at(job["created_at"]), status_at["running"], status_at["succeeded"]
    timings = job["result"]["timings"]
    first, last, export = timings["first_step_at"], timings["last_step_at"], timings["export_s"]
    metrics = job["result"]["metrics"]
    return {
        "job_id": job["id"],
        "wall_s": round(wall, 2),
        "samples_per_s": round(metrics["samples_per_s"], 1),
        "val_accuracy": round(metrics["val_accuracy"], 4),
        "onnx_max_abs_diff": metrics["onnx_max_abs_diff"],
        "post_to_first_step_s": round(first - created, 2),
        "split_s": {
            "queue": round(running - created, 2),
            "start": round(first - running, 2),
            "training": round(last - first, 2),
            "checkpoints": round(timings["checkpoint_s"], 3),
            "validation": round(timings["validation_s"], 2),
            "export": round(export, 2),
            "finish": round(done - last - export, 2),
        },
        "checkpoints": timings["checkpoints"],
        "validations": timings["validations"],
    }


def zoo_args(kind: str, model: str, epochs: int) -> list[str]:
    return [
        str(REPO / "bench" / "plain_ddp.py"), "--kind", kind, "--model", model, "--epochs", str(epochs),
        "--batch-size", str(BATCH), "--lr", str(LR), "--seed", str(SEED),
    ]  # fmt: skip


def plain(script_args: list[str]) -> dict[str, Any]:
    """``torchrun`` of a plain script (``script_args``: the script and its options, ``--out`` added)."""
    with tempfile.TemporaryDirectory(prefix="maas-bench-plain-") as tmp:
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            *script_args, "--out", f"{tmp}/model.pt",
        ]  # fmt: skip
        started = time.perf_counter()
        done = subprocess.run(command, env=child_env(1), capture_output=True, text=True, timeout=3600, cwd=REPO)
        wall = time.perf_counter() - started
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the plain loop failed: {done.stderr[-2000:]}")
    return {
        "wall_s": round(wall, 2),
        "samples_per_s": round(lines[0]["samples_per_s"], 1),
        "train_s": round(lines[0]["train_s"], 2),
        **({"val_accuracy": round(lines[0]["val_accuracy"], 4)} if "val_accuracy" in lines[0] else {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of the epochs: checks the bench, not the targets")
    names = [*WORKLOADS, TEXT_WORKLOAD.name]
    parser.add_argument("--only", action="append", choices=names, help="run only these workloads (repeatable)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/training[-quick].json")
    args = parser.parse_args()
    results = Path(__file__).parent / "results"
    out: Path = args.out or results / ("training-quick.json" if args.quick else "training.json")
    rows = []
    with local_platform(worker_concurrency="1") as maas:
        for name in names:
            if args.only and name not in args.only:
                continue
            if name == TEXT_WORKLOAD.name:
                epochs = max(2, TEXT_WORKLOAD.epochs // 10) if args.quick else TEXT_WORKLOAD.epochs
                plain_row = plain(TEXT_WORKLOAD.plain_args(epochs))
                platform_row = on_platform(maas, TEXT_WORKLOAD.platform_spec(maas, epochs))
            else:
                kind, model, full = WORKLOADS[name]
                epochs = max(2, full // 10) if args.quick else full
                plain_row = plain(zoo_args(kind, model, epochs))
                platform_row = on_platform(maas, platform_spec(kind, model, epochs))
            rows.append({
                "workload": name, "epochs": epochs, "plain": plain_row, "platform": platform_row,
                "samples_ratio": round(platform_row["samples_per_s"] / plain_row["samples_per_s"], 3),
                "wall_ratio": round(platform_row["wall_s"] / plain_row["wall_s"], 3),
                "measured": {"mode": "quick" if args.quick else "full",
                             "when": datetime.now().isoformat(timespec="seconds"),
                             "load_average": os.getloadavg()},
            })  # fmt: skip
            print(f"  {name} done", flush=True)
    print_table(rows)
    document = {
        "benchmark": "training",
        "mode": "quick (a tenth of the epochs: not the targets' workloads)" if args.quick else "full",
        "when": datetime.now().isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "system": platform.platform(),
                    "load_average_at_end": os.getloadavg()},
        "targets": {"samples_ratio_min": 0.95, "wall_ratio_max": 1.10},
        "rows": rows,
    }  # fmt: skip
    if args.only and out.exists():
        document = merged(json.loads(out.read_text()), document)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nwrote {out}")


def merged(previous: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """An earlier run's document with this run's rows in place of theirs: its own ``when`` and
    ``machine`` kept for its rows, this run listed in ``merged_runs`` (each row also carries the
    ``measured`` label of its run). Runs of another size are never mixed."""
    if previous.get("mode") != run["mode"]:
        raise SystemExit(f"the output file holds a {previous.get('mode')} run, not {run['mode']}; give --out")
    fresh = {row["workload"]: row for row in run["rows"]}
    rows = [fresh.pop(row["workload"], row) for row in previous.get("rows", [])] + list(fresh.values())
    merge = {"workloads": [row["workload"] for row in run["rows"]], "when": run["when"], "machine": run["machine"]}
    return {**previous, "rows": rows, "merged_runs": [*previous.get("merged_runs", []), merge]}


def print_table(rows: list[dict[str, Any]]) -> None:
    head = ("workload", "plain samples/s", "platform samples/s", "ratio", "plain wall s", "platform wall s", "ratio")
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for r in rows:
        p, q = r["plain"], r["platform"]
        print(f"| {r['workload']} | {p['samples_per_s']:.0f} | {q['samples_per_s']:.0f} | {r['samples_ratio']:.2f} | "
              f"{p['wall_s']:.1f} | {q['wall_s']:.1f} | {r['wall_ratio']:.2f} |")  # fmt: skip
    print("\nplatform wall time split (s): queue, start, training (of which checkpoints, validations), export, finish")
    for r in rows:
        s, q = r["platform"]["split_s"], r["platform"]
        print(f"  {r['workload']:<16} queue {s['queue']:.2f}  start {s['start']:.2f}  training {s['training']:.1f} "
              f"(checkpoints {s['checkpoints']:.3f}, {q['checkpoints']} taken; validations {s['validation']:.2f}, "
              f"{q['validations']} run)  export {s['export']:.2f}  "
              f"finish {s['finish']:.2f}   POST→1st step {q['post_to_first_step_s']:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
