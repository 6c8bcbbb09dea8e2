"""Measurements a compression report states for the source and after every pass.

Owns: parameter counts of a torch model or an ONNX file (total and non-zero), ONNX file size
raw and gzip-compressed (unstructured sparsity only saves bytes once compressed, so both are
reported), accuracy of an ONNX model on labelled rows, output fidelity against a reference
when there are no labels, and ONNX Runtime latency at batch 1 (p50) and throughput at batch
32 under explicit thread settings. Timings are returned, never judged: the caller decides
what is fast enough. The pure parts (counting, gzip, percentiles) are separate from the
parts that read files or run sessions.
"""

from __future__ import annotations

import gzip
import statistics
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

from compression.fidelity import Fidelity, accuracy, compare_outputs, make_session

OnnxModel: TypeAlias = str | Path | bytes | ort.InferenceSession
Inputs = np.ndarray | Mapping[str, np.ndarray]

_ORIG_SUFFIX = "_orig"  # torch.nn.utils.prune keeps the dense weight as <name>_orig


# --- parameters --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterCounts:
    total: int
    nonzero: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzero / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, int]:
        return {"total": self.total, "nonzero": self.nonzero}


def count_tensors(tensors: list[np.ndarray] | list[torch.Tensor]) -> ParameterCounts:
    total = sum(int(t.numel()) if isinstance(t, torch.Tensor) else int(t.size) for t in tensors)
    nonzero = sum(
        int(torch.count_nonzero(t)) if isinstance(t, torch.Tensor) else int(np.count_nonzero(t)) for t in tensors
    )
    return ParameterCounts(total=total, nonzero=nonzero)


def effective_parameters(model: nn.Module) -> list[torch.Tensor]:
    """The tensors the forward pass uses: under an active ``torch.nn.utils.prune``
    reparametrisation that is the masked weight, not the dense ``weight_orig``."""
    tensors: list[torch.Tensor] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if name.endswith(_ORIG_SUFFIX) and hasattr(module, name[: -len(_ORIG_SUFFIX)] + "_mask"):
                tensors.append(getattr(module, name[: -len(_ORIG_SUFFIX)]).detach())
            else:
                tensors.append(param.detach())
    return tensors


def parameter_counts(model: nn.Module) -> ParameterCounts:
    """Total and non-zero parameters of a torch model (masked weights count as pruned)."""
    return count_tensors(effective_parameters(model))


def onnx_parameter_counts(model: str | Path | onnx.ModelProto) -> ParameterCounts:
    """Total and non-zero values of the floating-point initializers of an ONNX model (shape
    constants and other integer initializers are not parameters)."""
    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    arrays = [numpy_helper.to_array(init) for init in proto.graph.initializer]
    return count_tensors([a for a in arrays if a.dtype.kind == "f"])


# --- bytes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSize:
    bytes: int
    gzip_bytes: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def gzip_size(data: bytes, level: int = 9) -> int:
    """Bytes of ``data`` gzip-compressed (mtime fixed, so the number is repeatable)."""
    return len(gzip.compress(data, compresslevel=level, mtime=0))


def file_size(path: str | Path, level: int = 9) -> FileSize:
    data = Path(path).read_bytes()
    return FileSize(bytes=len(data), gzip_bytes=gzip_size(data, level))


# --- outputs, accuracy, fidelity ---------------------------------------------------------------


def _session(model: OnnxModel, threads: int) -> ort.InferenceSession:
    return model if isinstance(model, ort.InferenceSession) else make_session(model, intra_op_threads=threads)


def as_feed(session: ort.InferenceSession, inputs: Inputs) -> dict[str, np.ndarray]:
    """A feed for ``session``: a bare array goes to its first input; a mapping is kept to the
    inputs the session has."""
    if isinstance(inputs, np.ndarray):
        return {session.get_inputs()[0].name: inputs}
    wanted = {i.name for i in session.get_inputs()}
    return {name: array for name, array in inputs.items() if name in wanted}


def feed_rows(feed: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feed.values())).shape[0])


def take_rows(feed: Mapping[str, np.ndarray], start: int, count: int) -> dict[str, np.ndarray]:
    """``count`` rows from ``start``, wrapping around when the feed has fewer (so a batch-32
    measurement works on a handful of rows)."""
    rows = feed_rows(feed)
    index = (np.arange(start, start + count) % rows) if rows else np.arange(0)
    return {name: np.ascontiguousarray(array[index]) for name, array in feed.items()}


def onnx_outputs(model: OnnxModel, inputs: Inputs, *, batch_size: int = 256, threads: int = 1) -> np.ndarray:
    """The first output of ``model`` over all rows of ``inputs``, run in batches."""
    session = _session(model, threads)
    feed = as_feed(session, inputs)
    rows = feed_rows(feed)
    if rows == 0:
        raise ValueError("no rows to run")
    name = session.get_outputs()[0].name
    parts = []
    for start in range(0, rows, batch_size):
        parts.append(session.run([name], take_rows(feed, start, min(batch_size, rows - start)))[0])
    return np.concatenate(parts, axis=0)


def onnx_accuracy(model: OnnxModel, x: Inputs, y: np.ndarray, *, batch_size: int = 256, threads: int = 1) -> float:
    """Top-1 accuracy of the model's first output (logits) against labels ``y``."""
    return accuracy(onnx_outputs(model, x, batch_size=batch_size, threads=threads), np.asarray(y))


def onnx_fidelity(
    model: OnnxModel, x: Inputs, reference: np.ndarray, *, batch_size: int = 256, threads: int = 1
) -> Fidelity:
    """Mean/min cosine and max abs error of the model's outputs against ``reference`` outputs
    (the source model's, on the same rows): the measure when there are no labels."""
    return compare_outputs(reference, onnx_outputs(model, x, batch_size=batch_size, threads=threads))


# --- speed -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Speed:
    latency_p50_ms: float  # one row per call
    latency_p90_ms: float
    throughput_items_per_s: float  # ``throughput_batch`` rows per call
    throughput_batch: int
    intra_op_threads: int
    latency_iterations: int
    throughput_iterations: int

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile_ms(seconds: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100, linear interpolation) of durations, in milliseconds."""
    if not seconds:
        raise ValueError("no timings")
    return float(np.percentile(np.asarray(seconds), q)) * 1000.0


def items_per_second(batch_size: int, seconds: list[float]) -> float:
    """Throughput from per-call durations, using their median so a stolen time slice does
    not decide the number."""
    if not seconds:
        raise ValueError("no timings")
    return batch_size / statistics.median(seconds)


def time_calls(
    session: ort.InferenceSession, feed: Mapping[str, np.ndarray], *, warmup: int, iterations: int
) -> list[float]:
    for _ in range(warmup):
        session.run(None, dict(feed))
    durations = []
    for _ in range(iterations):
        start = time.perf_counter()
        session.run(None, dict(feed))
        durations.append(time.perf_counter() - start)
    return durations


def measure_speed(
    model: str | Path | bytes,
    inputs: Inputs,
    *,
    threads: int = 1,
    warmup: int = 10,
    latency_iterations: int = 200,
    throughput_iterations: int = 50,
    throughput_batch: int = 32,
) -> Speed:
    """p50/p90 latency at batch 1 and throughput at ``throughput_batch`` rows (rows of
    ``inputs``, repeated when there are fewer), with ``threads`` intra-op threads."""
    if latency_iterations < 1 or throughput_iterations < 1:
        raise ValueError("iteration counts must be at least 1")
    session = make_session(model, intra_op_threads=threads)
    feed = as_feed(session, inputs)
    single = time_calls(session, take_rows(feed, 0, 1), warmup=warmup, iterations=latency_iterations)
    batch = time_calls(session, take_rows(feed, 0, throughput_batch), warmup=warmup, iterations=throughput_iterations)
    return Speed(
        latency_p50_ms=percentile_ms(single, 50),
        latency_p90_ms=percentile_ms(single, 90),
        throughput_items_per_s=items_per_second(throughput_batch, batch),
        throughput_batch=throughput_batch,
        intra_op_threads=threads,
        latency_iterations=latency_iterations,
        throughput_iterations=throughput_iterations,
    )


# --- everything the report says about one model ------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One row of the report: a model's size, quality and speed."""

    parameters: ParameterCounts
    size: FileSize
    accuracy: float | None
    fidelity: Fidelity | None
    speed: Speed | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "parameters": self.parameters.total,
            "nonzero_parameters": self.parameters.nonzero,
            "onnx_bytes": self.size.bytes,
            "onnx_gzip_bytes": self.size.gzip_bytes,
            "accuracy": self.accuracy,
            "fidelity": self.fidelity.as_dict() if self.fidelity else None,
            "speed": self.speed.as_dict() if self.speed else None,
        }


def measure(
    onnx_path: str | Path,
    x: Inputs,
    *,
    y: np.ndarray | None = None,
    reference: np.ndarray | None = None,
    torch_model: nn.Module | None = None,
    threads: int = 1,
    speed: bool = True,
    **speed_options: int,
) -> Measurement:
    """Measure an exported model on eval rows ``x``: accuracy when labels ``y`` are given,
    fidelity when ``reference`` outputs are; parameters from ``torch_model`` when given
    (exact for pruned weights), else from the ONNX initializers."""
    session = make_session(onnx_path, intra_op_threads=threads)
    outputs = onnx_outputs(session, x) if y is not None or reference is not None else None
    return Measurement(
        parameters=parameter_counts(torch_model) if torch_model is not None else onnx_parameter_counts(onnx_path),
        size=file_size(onnx_path),
        accuracy=accuracy(outputs, np.asarray(y)) if y is not None and outputs is not None else None,
        fidelity=compare_outputs(reference, outputs) if reference is not None and outputs is not None else None,
        speed=measure_speed(onnx_path, x, threads=threads, **speed_options) if speed else None,
    )
