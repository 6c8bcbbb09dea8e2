"""The program torchrun runs for a training job (``training.launch`` runs the same ``main`` in
ranks it forks with torchrun's environment, the data already loaded).

    # on 2 processes of this machine
    torchrun --nproc_per_node 2 -m training.run --spec spec.json --data data.npz --out out/
    # the same without torchrun (a spec with nproc_per_node 1), builtin dataset, resumed
    python -m training.run --spec spec.json --out out/ --resume out/checkpoints/step-200

``--data`` is the dataset file (npz, csv or parquet, format read from its first bytes;
omit it for a builtin dataset), ``--val-data`` the validation file when the spec names
one. Rank 0 writes one JSON object per line to stdout, and only those:

    {"type": "progress", "step", "total_steps", "epoch", "loss", "accuracy", "samples_per_s"
                         [, "val_loss", "val_accuracy" at the end of an epoch]}
    {"type": "checkpoint", "path": "OUT/checkpoints/step-N", "step": N
                           [, "val_loss", "val_accuracy", "val_step" of the latest validation]}
    {"type": "result", "metrics": {...}, "files": {"model", "curves", "state_dict"}, "classes", ...}
    (a regression head: "mae" for "accuracy"; "val_mae", "val_rmse", "val_r2" for "val_accuracy")
    {"type": "preempted", "step": N}   (after the checkpoint of step N, when --stop-file appeared)
    {"type": "error", "code": "bad_spec"|"bad_launch"|"bad_dataset"|"bad_checkpoint"|"bad_init"|"nan_loss"|
                      "out_of_memory"|"onnx_parity"|"internal", "message" [, "pointer", "rank"]}

Everything else (warnings, logs, tracebacks) goes to stderr. The exit status is 0 after
a result or a ``preempted`` line (a clean stop: torchrun turns any other status into 1),
1 after an error, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from core.spec_kit import validation_problems
from training import dist
from training.checkpoint import CheckpointError
from training.data import DatasetError, Splits
from training.loop import Preempted, RunPaths, TrainingFailure, train
from training.spec import TrainingSpec
from training.zoo import InitFromError


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m training.run", description="Run one training job.")
    parser.add_argument("--spec", type=Path, required=True, help="the training spec, a JSON file")
    parser.add_argument("--data", type=Path, help="the dataset file; omit for a builtin dataset")
    parser.add_argument("--val-data", type=Path, help="the validation file, when the spec names one")
    parser.add_argument("--out", type=Path, required=True, help="where checkpoints and artifacts go")
    parser.add_argument("--resume", type=Path, help="a checkpoint directory (OUT/checkpoints/step-N) to continue from")
    parser.add_argument("--init-from", type=Path, help="a safetensors state dict to start from (the spec's init_from)")
    parser.add_argument("--report-every", type=int, help="steps between progress lines (default: about 50 a run)")
    parser.add_argument(
        "--events",
        type=Path,
        help="also append the protocol lines to this file (with several nodes, rank 0 may run on any of them)",
    )
    parser.add_argument(
        "--stop-file",
        type=Path,
        help="when this file appears (on any rank's machine), checkpoint at the next sync step and stop",
    )
    return parser.parse_args(argv)


class JsonLines:
    """The protocol stream: one JSON object per line, flushed at once, to each stream."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams
        self.lock = threading.Lock()  # the checkpoint writer's thread says `checkpoint` too

    def __call__(self, event: dict[str, Any]) -> None:
        line = json.dumps(event) + "\n"
        with self.lock:
            for stream in self.streams:
                stream.write(line)
                stream.flush()


def claim_stdout() -> TextIO:
    """Keep stdout for the protocol: return a stream on the original stdout and point file
    descriptor 1 (and so every print, ours or a library's) at stderr."""
    sys.stdout.flush()
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return protocol


def read_spec(path: Path) -> TrainingSpec:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SpecFileError(f"cannot read the spec {path}: {exc}") from exc
    return TrainingSpec.model_validate(data)


class SpecFileError(Exception):
    pass


def error_event(exc: BaseException) -> tuple[dict[str, Any], bool]:
    """The error object for ``exc`` and whether every rank raises it (then rank 0 alone reports)."""
    import torch  # the error classes only; torch is loaded by then anyway

    if isinstance(exc, ValidationError):
        errors = validation_problems(exc)
        message = "; ".join(f"{e['pointer']}: {e['detail']}" for e in errors)
        return {"type": "error", "code": "bad_spec", "message": message, "errors": errors}, True
    if isinstance(exc, SpecFileError):
        return {"type": "error", "code": "bad_spec", "message": str(exc)}, True
    if isinstance(exc, DatasetError):
        return {"type": "error", "code": "bad_dataset", "message": exc.detail, "pointer": exc.pointer}, True
    if isinstance(exc, InitFromError):
        return {"type": "error", "code": "bad_init", "message": str(exc), "pointer": "/init_from"}, True
    if isinstance(exc, CheckpointError):
        return {"type": "error", "code": "bad_checkpoint", "message": str(exc)}, True
    if isinstance(exc, TrainingFailure):
        return {"type": "error", "code": exc.code, "message": exc.message}, True
    if isinstance(exc, torch.OutOfMemoryError | MemoryError) or "can't allocate memory" in str(exc):
        return {"type": "error", "code": "out_of_memory", "message": str(exc).splitlines()[0]}, False
    return {"type": "error", "code": "internal", "message": f"{type(exc).__name__}: {exc}"}, False


def main(argv: Sequence[str] | None = None, splits: Splits | None = None) -> int:
    """Run one rank; ``splits``: the data, when a launcher loaded it once for every rank."""
    args = parse_args(argv)
    streams = [claim_stdout()]
    if args.events is not None:
        streams.append(open(args.events, "a", buffering=1))  # noqa: SIM115 - open until the process exits
    emit = JsonLines(*streams)
    ctx = None
    try:
        ctx = dist.setup()
        spec = read_spec(args.spec)
        paths = RunPaths(
            out=args.out,
            data=args.data,
            val_data=args.val_data,
            resume=args.resume,
            stop_file=args.stop_file,
            init_from=args.init_from,
        )
        train(spec, paths, ctx, emit, report_every=args.report_every, splits=splits)
    except Preempted as stopped:
        if ctx is not None and ctx.is_rank0:
            emit({"type": "preempted", "step": stopped.step})
        return 0
    except Exception as exc:
        event, on_every_rank = error_event(exc)
        rank = ctx.rank if ctx is not None else 0
        if event["code"] == "internal":
            traceback.print_exc()
        if rank == 0 or not on_every_rank:
            emit(event if rank == 0 else {**event, "rank": rank})
        return 1
    finally:
        dist.teardown()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    # Skip the interpreter's teardown of torch, dynamo and matplotlib state (about 2 s):
    # everything this program owes is written and flushed by now.
    os._exit(code)
