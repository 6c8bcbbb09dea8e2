"""Output fidelity of a compressed model against its source, and batched ONNX Runtime runs.

Owns: the metrics a compression report states when labels exist (a classifier's accuracy, a
regression model's MAE, RMSE and R²) and when they do not (cosine similarity per row, max abs
error; a regression model's values compared as one vector), as pure numpy functions; and running an ONNX model
over batches with an explicit number of intra-op threads, so that every measurement says which
thread settings it used.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Fidelity:
    """How close ``candidate`` rows are to ``reference`` rows."""

    rows: int
    mean_cosine: float
    min_cosine: float
    max_abs_error: float

    def meets(self, *, mean_cosine: float, min_cosine: float) -> bool:
        return self.mean_cosine >= mean_cosine and self.min_cosine >= min_cosine

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _as_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1) if x.ndim != 1 else x.reshape(1, -1)


def cosine_per_row(reference: np.ndarray, candidate: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Cosine similarity of each row (first axis; the rest flattened). Two zero rows count as 1."""
    a, b = _as_rows(reference), _as_rows(candidate)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    dot = np.sum(a * b, axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = norms <= eps
    cos = np.where(both_zero, 1.0, dot / np.maximum(norms, eps))
    return np.clip(cos, -1.0, 1.0)


def max_abs_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    a, b = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def compare_outputs(reference: np.ndarray, candidate: np.ndarray) -> Fidelity:
    cos = cosine_per_row(reference, candidate)
    return Fidelity(
        rows=int(cos.shape[0]),
        mean_cosine=float(np.mean(cos)),
        min_cosine=float(np.min(cos)),
        max_abs_error=max_abs_error(reference, candidate),
    )


def compare_values(reference: np.ndarray, candidate: np.ndarray) -> Fidelity:
    """A regression model's values (one per row, ``(N,)`` or ``(N, 1)``) against the source's:
    the cosine of the two vectors of values (a single value per row has no direction of its
    own) and the largest difference of a row."""
    a, b = np.asarray(reference).reshape(1, -1), np.asarray(candidate).reshape(1, -1)
    cos = float(cosine_per_row(a, b)[0])
    return Fidelity(rows=a.shape[1], mean_cosine=cos, min_cosine=cos, max_abs_error=max_abs_error(a, b))


@dataclass(frozen=True)
class RegressionErrors:
    """A regression model's values against the labels (in the labels' unit, except R²)."""

    rows: int
    mae: float
    rmse: float
    r2: float  # 1 - residual / total sum of squares; 0 when the labels do not vary

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def regression_errors(values: np.ndarray, targets: np.ndarray) -> RegressionErrors:
    """MAE, RMSE and R² of ``values`` (``(N,)`` or ``(N, 1)``) against ``targets`` ``(N,)``, by
    the formulas a training job reports ``val_mae``/``val_rmse``/``val_r2`` with."""
    truth = np.asarray(targets, dtype=np.float64).reshape(-1)
    predicted = np.asarray(values, dtype=np.float64).reshape(-1)
    if predicted.shape != truth.shape:
        raise ValueError(f"{predicted.size} values for {truth.size} labels")
    if not truth.size:
        raise ValueError("no rows to measure")
    error = predicted - truth
    squares = float(np.sum(error**2))
    total = float(np.sum((truth - truth.mean()) ** 2))
    return RegressionErrors(
        rows=int(truth.size),
        mae=float(np.mean(np.abs(error))),
        rmse=float(np.sqrt(squares / truth.size)),
        r2=1.0 - squares / total if total > 0 else 0.0,
    )


def accuracy(logits_or_labels: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy: ``logits_or_labels`` is either class scores (N, C) or predicted labels (N,)."""
    predicted = np.asarray(logits_or_labels)
    if predicted.ndim > 1:
        predicted = predicted.argmax(axis=-1)
    truth = np.asarray(labels)
    if predicted.shape != truth.shape:
        raise ValueError(f"shapes differ: {predicted.shape} vs {truth.shape}")
    return float(np.mean(predicted == truth)) if truth.size else 0.0


def label_agreement(reference_logits: np.ndarray, candidate_logits: np.ndarray) -> float:
    """Fraction of rows where both models predict the same class (fidelity without labels)."""
    return accuracy(np.asarray(candidate_logits).argmax(axis=-1), np.asarray(reference_logits).argmax(axis=-1))


def make_session(
    model: str | Path | bytes,
    *,
    intra_op_threads: int,
    inter_op_threads: int = 1,
    optimization: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
) -> ort.InferenceSession:
    """A CPU session with explicit thread counts (ORT's default would take every core)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = inter_op_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = optimization
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])


def run_batches(
    model: str | Path | bytes | ort.InferenceSession,
    batches: Iterable[Feed],
    *,
    output: str | None = None,
    intra_op_threads: int = 1,
) -> np.ndarray:
    """Run every batch and concatenate one output (the first unless named) along axis 0."""
    session = (
        model if isinstance(model, ort.InferenceSession) else make_session(model, intra_op_threads=intra_op_threads)
    )
    name = output or session.get_outputs()[0].name
    wanted = {i.name for i in session.get_inputs()}
    parts = [session.run([name], {k: v for k, v in batch.items() if k in wanted})[0] for batch in batches]
    if not parts:
        raise ValueError("no batches to run")
    return np.concatenate(parts, axis=0)


def session_info(session: ort.InferenceSession) -> dict[str, Any]:
    options = session.get_session_options()
    return {"intra_op_threads": options.intra_op_num_threads, "inter_op_threads": options.inter_op_num_threads}
