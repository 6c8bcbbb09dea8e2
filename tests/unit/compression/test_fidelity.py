"""Fidelity math on known vectors, batched ORT runs, and the timing arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression.fidelity import (
    accuracy,
    compare_outputs,
    cosine_per_row,
    label_agreement,
    make_session,
    max_abs_error,
    run_batches,
    session_info,
)
from compression.throughput import compare_speed, paired_ratios, round_robin
from tests.support import compression_models as models


def test_cosine_of_known_rows() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0], [0.0, 0.0], [4.0, 3.0]])
    np.testing.assert_allclose(cosine_per_row(a, b), [0.0, 1.0, -1.0, 1.0, 24 / 25])


def test_cosine_flattens_trailing_axes() -> None:
    a = np.ones((2, 3, 4))
    assert cosine_per_row(a, 2 * a).shape == (2,)


def test_compare_outputs_summarises_rows() -> None:
    a = np.array([[1.0, 0.0], [0.0, 1.0]])
    b = np.array([[1.0, 0.0], [1.0, 1.0]])
    fidelity = compare_outputs(a, b)
    assert fidelity.rows == 2
    assert fidelity.min_cosine == pytest.approx(np.sqrt(0.5))
    assert fidelity.mean_cosine == pytest.approx((1 + np.sqrt(0.5)) / 2)
    assert fidelity.max_abs_error == 1.0
    assert fidelity.meets(mean_cosine=0.8, min_cosine=0.7)
    assert not fidelity.meets(mean_cosine=0.9, min_cosine=0.7)


def test_shape_mismatch_is_an_error() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        cosine_per_row(np.ones((2, 3)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="shapes differ"):
        max_abs_error(np.ones(2), np.ones(3))


def test_accuracy_from_logits_or_labels() -> None:
    labels = np.array([0, 1, 2, 1])
    logits = np.array([[5, 1, 0], [0, 3, 1], [1, 0, 0], [0, 2, 1]])
    assert accuracy(logits, labels) == 0.75
    assert accuracy(np.array([0, 1, 2, 2]), labels) == 0.75
    assert label_agreement(logits, logits + 0.1) == 1.0


def test_run_batches_concatenates_with_explicit_threads(tmp_path: Path) -> None:
    path = models.mlp(tmp_path / "mlp.onnx")
    x = models.inputs((10, 16))
    session = make_session(path, intra_op_threads=1)
    assert session_info(session)["intra_op_threads"] == 1
    whole = session.run(None, {"x": x})[0]
    parts = run_batches(path, [{"x": x[:4]}, {"x": x[4:]}], intra_op_threads=1)
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


def test_rounds_rotate_so_no_model_always_runs_first() -> None:
    assert round_robin(["a", "b", "c"], 4) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]


def test_ratios_are_paired_within_rounds() -> None:
    # round 2 ran under a neighbour's load: both models slowed, the ratio did not change
    seconds = {"fp32": [0.2, 0.6, 0.2], "int8": [0.1, 0.3, 0.1]}
    ratios = paired_ratios(seconds, "fp32")
    assert ratios == {"fp32": 1.0, "int8": pytest.approx(2.0)}


def test_compare_speed_reports_every_model(tmp_path: Path) -> None:
    path = models.mlp(tmp_path / "mlp.onnx")
    speeds = compare_speed({"a": path, "b": path}, {"x": models.inputs((8, 16))}, intra_op_threads=1, rounds=3)
    assert set(speeds) == {"a", "b"}
    assert all(s.items_per_s > 0 and s.batch_size == 8 and s.intra_op_threads == 1 for s in speeds.values())
    assert speeds["a"].ratio_to_reference == 1.0 and speeds["b"].ratio_to_reference > 0
    assert speeds["a"].best_items_per_s >= speeds["a"].items_per_s
