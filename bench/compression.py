"""Compression benchmark: the issue's targets on a digits CNN trained by the platform's code, and
the int8 MiniLM numbers.

    .venv/bin/python bench/compression.py [--epochs 20] [--threads 1] [--out bench/results/compression.json]

1. Trains the teacher with ``python -m training.run`` (one process, the job's own program): a
   CNN with channels [64, 128] on the builtin digits, 20% held out (seed 0).
2. Runs one compression pipeline per scenario (the job's code: ``compression.pipeline``) on
   that model, fine-tuning on the training rows and measuring on the held-out rows (the
   teacher never saw them):
   - 80% unstructured pruning, global, + fine-tuning: loses <= 1 accuracy point;
   - structured pruning to half the channels + fine-tuning: loses <= 2 points and is faster
     at batch 1;
   - distillation into a student with <= 25% of the teacher's parameters: keeps >= 97% of the
     teacher's accuracy;
   - static int8 (QDQ, per-channel, 256 calibration rows from the training rows): loses <= 1
     point with an ONNX file <= 30% of the fp32 bytes.
   Batch-1 speed-ups are measured interleaved (``compression.throughput.compare_speed``: the
   teacher and the candidate alternate in rotating rounds, the ratio is the median of the
   per-round ratios), since a neighbour's load would skew two separate measurements.
3. Reads the int8 MiniLM result of ``bench/compression_minilm.py`` from
   ``bench/results/compression_minilm.json`` (run that first; about 8 minutes) and checks its
   targets: mean cosine >= 0.995, every sentence >= 0.98, over >= 200 sentences, bytes <= 30%,
   batch-32 throughput >= fp32's (ratio from the same run).

Prints a table and writes ``bench/results/compression.json``. Takes about 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort
import torch

from compression import pipeline
from compression.data import PipelineData, assemble, read_rows
from compression.passes import ModelState, fit_to_inputs
from compression.sources import source_state
from compression.spec import CNNSpec, CompressionSpec
from compression.throughput import compare_speed

RESULTS = Path(__file__).resolve().parent / "results"
MINILM = RESULTS / "compression_minilm.json"
TEACHER = {"arch": "cnn", "channels": [64, 128], "kernel_size": 3}
SPLIT = {"fraction": 0.2, "seed": 0}

SCENARIOS: dict[str, list[dict[str, Any]]] = {
    "prune-unstructured-80": [
        {"kind": "prune", "amount": 0.8, "scope": "global", "fine_tune_epochs": 5, "lr": 5e-4},
    ],
    "prune-structured-50": [
        {"kind": "prune", "amount": 0.5, "structured": True, "fine_tune_epochs": 8},
    ],
    "distill-student": [
        {
            "kind": "distill",
            "student": {"arch": "cnn", "channels": [16, 32]},
            "temperature": 4.0,
            "alpha": 0.7,
            "epochs": 40,
            "lr": 3e-3,
        },
    ],
    "static-int8": [
        {"kind": "quantize", "mode": "static", "calibration": {"rows": 256}},
    ],
    "structured-50+static-int8": [
        {"kind": "prune", "amount": 0.5, "structured": True, "fine_tune_epochs": 8},
        {"kind": "quantize", "mode": "static", "calibration": {"rows": 256}},
    ],
}


@dataclass(frozen=True)
class Target:
    """A claim of the issue about one scenario's last stage against the teacher."""

    text: str
    check: Callable[[Mapping[str, Any]], bool]


TARGETS: dict[str, list[Target]] = {
    "prune-unstructured-80": [
        Target("loses <= 1 accuracy point", lambda r: r["accuracy_change_points"] >= -1.0),
        Target("non-zero parameters <= 21%", lambda r: r["nonzero_parameters_ratio"] <= 0.21),
    ],
    "prune-structured-50": [
        Target("loses <= 2 accuracy points", lambda r: r["accuracy_change_points"] >= -2.0),
        Target("faster at batch 1 (interleaved ratio > 1)", lambda r: r["batch1_speedup_interleaved"] > 1.0),
    ],
    "distill-student": [
        Target("student <= 25% of the teacher's parameters", lambda r: r["parameters_ratio"] <= 0.25),
        Target("keeps >= 97% of the teacher's accuracy", lambda r: r["accuracy_kept"] >= 0.97),
    ],
    "static-int8": [
        Target("loses <= 1 accuracy point", lambda r: r["accuracy_change_points"] >= -1.0),
        Target("ONNX bytes <= 30% of fp32", lambda r: r["onnx_bytes_ratio"] <= 0.30),
    ],
    "structured-50+static-int8": [],
}


# --- the teacher -------------------------------------------------------------------------------


def train_teacher(work: Path, epochs: int, threads: int) -> dict[str, Any]:
    """The digits CNN, trained by ``training.run`` exactly as a one-process training job."""
    spec = {
        "model": TEACHER,
        "dataset": {"builtin": "digits"},
        "validation": {"fraction": SPLIT["fraction"]},
        "strategy": {"kind": "ddp", "nproc_per_node": 1},
        "hyperparameters": {"epochs": epochs, "batch_size": 32, "lr": 1e-3, "optimizer": "adam", "seed": SPLIT["seed"]},
        "checkpoint_every_steps": 1_000_000,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "training.run", "--spec", str(work / "spec.json"), "--out", str(work / "teacher")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    result = next((line for line in lines if line["type"] == "result"), None)
    if done.returncode or result is None:
        raise SystemExit(f"training failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return {**result, "seconds": time.perf_counter() - started}


# --- scenarios ---------------------------------------------------------------------------------


def spec_for(passes: list[dict[str, Any]], threads: int) -> CompressionSpec:
    return CompressionSpec.model_validate(
        {
            "source": {"file_id": "file_teacher", "arch": TEACHER},
            "passes": passes,
            "dataset": {"builtin": "digits"},
            "eval": {"builtin": "digits", **SPLIT},
            "accuracy_floor": {"max_drop": None, "min_mean_cosine": None},
            "measurement": {"threads": threads, "latency_iterations": 300, "throughput_iterations": 100},
        }
    )


def load_data(spec: CompressionSpec) -> PipelineData:
    return assemble(spec, lambda data, pointer: read_rows(None, data, pointer), num_outputs=10)


def interleaved_speedups(source: Path, candidate: Path, eval_x: np.ndarray, threads: int) -> dict[str, float]:
    """Teacher time / candidate time at batch 1 and batch 32, median of per-round ratios."""
    ratios = {}
    for batch in (1, 32):
        feed = fit_to_inputs(source, eval_x[:batch])
        speeds = compare_speed(
            {"source": source, "candidate": candidate},
            feed,
            intra_op_threads=threads,
            reference="source",
            rounds=41,
            runs_per_round=50 if batch == 1 else 10,
        )
        ratios[f"batch{batch}_speedup_interleaved"] = speeds["candidate"].ratio_to_reference
    return ratios


def run_scenario(name: str, teacher: ModelState, work: Path, threads: int) -> dict[str, Any]:
    spec = spec_for(SCENARIOS[name], threads)
    data = load_data(spec)
    started = time.perf_counter()
    result = pipeline.run(
        teacher, spec.passes, data, work / name, floor=spec.accuracy_floor, measurement=spec.measurement
    )
    seconds = time.perf_counter() - started
    overall = {**result.report["overall"]}
    overall |= interleaved_speedups(teacher.onnx_path, result.final.onnx_path, data.eval_x, threads)
    targets = [{"target": t.text, "met": bool(t.check(overall))} for t in TARGETS[name]]
    return {
        "scenario": name,
        "passes": [p.model_dump(mode="json") for p in spec.passes],
        "seconds": seconds,
        "overall": overall,
        "targets": targets,
        "met": all(t["met"] for t in targets),
        "stages": [{k: v for k, v in row.items() if k != "vs_previous"} for row in result.report["stages"]],
    }


# --- MiniLM ------------------------------------------------------------------------------------


def minilm_summary(path: Path) -> dict[str, Any] | None:
    """The int8 MiniLM numbers of ``bench/compression_minilm.py``'s last run, checked."""
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    chosen = next(row for row in report["variants"] if row["variant"] == report["chosen"])
    sentences = report["setup"]["eval_sentences"]
    targets = [
        {"target": "mean cosine >= 0.995", "met": chosen["mean_cosine"] >= 0.995},
        {"target": "every sentence >= 0.98", "met": chosen["min_cosine"] >= 0.98},
        {"target": ">= 200 sentences", "met": sentences >= 200},
        {"target": "ONNX bytes <= 30% of fp32", "met": chosen["bytes_ratio"] <= 0.30},
        {"target": "batch-32 throughput >= fp32 (same run)", "met": chosen["throughput_ratio"] >= 1.0},
    ]
    return {
        "source": str(path.relative_to(RESULTS.parent.parent)),
        "variant": chosen["variant"],
        "description": chosen["description"],
        "mean_cosine": chosen["mean_cosine"],
        "min_cosine": chosen["min_cosine"],
        "eval_sentences": sentences,
        "bytes": chosen["bytes"],
        "bytes_ratio": chosen["bytes_ratio"],
        "throughput_ratio": chosen["throughput_ratio"],
        "latency_batch1_ms": report.get("latency_batch1_ms"),
        "targets": targets,
        "met": all(t["met"] for t in targets),
    }


# --- output ------------------------------------------------------------------------------------


def _fmt(value: float | None, pattern: str) -> str:
    return "-" if value is None else format(value, pattern)


def print_table(teacher_row: Mapping[str, Any], scenarios: list[dict[str, Any]], minilm: dict[str, Any] | None) -> None:
    header = (
        f"{'scenario':<26} {'acc':>7} {'Δpts':>6} {'params':>7} {'nonzero':>7} {'bytes':>6} {'gzip':>6} "
        f"{'b1 x':>6} {'b32 x':>6}  targets"
    )
    print()
    print(header)
    print("-" * len(header))
    print(
        f"{'teacher cnn [64,128]':<26} {teacher_row['accuracy']:>7.4f} {'':>6} {teacher_row['parameters']:>7} "
        f"{teacher_row['nonzero_parameters']:>7} {teacher_row['onnx_bytes'] / 1024:>5.0f}K "
        f"{teacher_row['onnx_gzip_bytes'] / 1024:>5.0f}K"
    )
    for item in scenarios:
        last, overall = item["stages"][-1], item["overall"]
        print(
            f"{item['scenario']:<26} {last['accuracy']:>7.4f} {overall['accuracy_change_points']:>+6.2f} "
            f"{overall['parameters_ratio']:>7.1%} {overall['nonzero_parameters_ratio']:>7.1%} "
            f"{overall['onnx_bytes_ratio']:>6.1%} {overall['onnx_gzip_bytes_ratio']:>6.1%} "
            f"{overall['batch1_speedup_interleaved']:>5.2f}x {overall['batch32_speedup_interleaved']:>5.2f}x  "
            + ("ok" if item["met"] else "MISSED: " + "; ".join(t["target"] for t in item["targets"] if not t["met"]))
        )
    print("(ratios against the teacher; b1/b32 x: interleaved speed-up at batch 1 / 32, > 1 is faster)")
    if minilm is None:
        print("\nMiniLM int8: no results yet; run bench/compression_minilm.py first")
        return
    print(
        f"\nMiniLM int8 ({minilm['variant']}): mean cos {minilm['mean_cosine']:.5f}, "
        f"min cos {minilm['min_cosine']:.5f} over {minilm['eval_sentences']} sentences, "
        f"bytes {minilm['bytes_ratio']:.1%} of fp32, batch-32 throughput {minilm['throughput_ratio']:.2f}x fp32  "
        + ("ok" if minilm["met"] else "MISSED")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="teacher training epochs")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads for every measurement")
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS / "compression.json")
    parser.add_argument("--only", nargs="*", choices=sorted(SCENARIOS), help="run these scenarios only")
    args = parser.parse_args(argv)
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # the exporter warns about absent torchvision ops
    logging.getLogger("root").setLevel(logging.ERROR)  # ORT's quantizer warns through the root logger
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory(prefix="bench-compression-") as tmp:
        work = Path(tmp)
        trained = train_teacher(work, args.epochs, args.torch_threads)
        print(f"teacher: val accuracy {trained['metrics']['val_accuracy']:.4f} in {trained['seconds']:.1f}s")
        spec = spec_for(SCENARIOS["static-int8"], args.threads)
        teacher = source_state(
            spec.source.arch,
            Path(trained["files"]["state_dict"]),
            Path(trained["files"]["model"]),
            load_data(spec).eval_x,
        )
        assert isinstance(spec.source.arch, CNNSpec)
        scenarios = []
        for name in args.only or SCENARIOS:
            print(f"scenario {name} ...", flush=True)
            scenarios.append(run_scenario(name, teacher, work, args.threads))
    minilm = minilm_summary(MINILM)
    teacher_row = scenarios[0]["stages"][0]
    print_table(teacher_row, scenarios, minilm)
    report = {
        "teacher": {
            "arch": TEACHER,
            "training": {"epochs": args.epochs, "split": SPLIT, "metrics": trained["metrics"]},
            "row": teacher_row,
        },
        "scenarios": scenarios,
        "minilm_int8": minilm,
        "all_targets_met": all(s["met"] for s in scenarios) and (minilm is None or minilm["met"]),
        "setup": {
            "intra_op_threads": args.threads,
            "torch_threads": args.torch_threads,
            "eval_rows": "the 20% of digits held out of training (seed 0): 359 rows",
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "cpu_count": os.cpu_count(),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {args.out}")
    return 0 if report["all_targets_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
