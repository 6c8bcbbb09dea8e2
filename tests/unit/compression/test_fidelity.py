"""Fidelity math on known vectors (a regression model's errors and agreement included), batched
ORT runs, and the timing arithmetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from compression.fidelity import (
    accuracy,
    compare_outputs,
    compare_values,
    cosine_per_row,
    label_agreement,
    make_session,
    max_abs_error,
    regression_errors,
    run_batches,
    session_info,
)
from compression.throughput import compare_speed, paired_ratios, round_robin
from tests.support import compression_models as models


def test_cosine_of_known_rows() -> None:
    a = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 1.0], [2.0, 2.0], [-1.0, 0.0], [0.0, 0.0], [4.0, 3.0]])
    np.testing.assert_allclose(cosine_per_row(a, b), [0.0, 1.0, -1.0, 1.0, 24 / 25])


def test_regression_errors_of_known_values() -> None:
    targets = np.array([0.0, 1.0, 2.0, 3.0])
    errors = regression_errors(np.array([[0.5], [1.0], [2.0], [2.0]], dtype=np.float32), targets)
    # errors 0.5, 0, 0, -1: |e| sums to 1.5, e² to 1.25; the targets' squares about their mean sum to 5
    assert errors.rows == 4
    assert errors.mae == pytest.approx(1.5 / 4) and errors.rmse == pytest.approx(np.sqrt(1.25 / 4))
    assert errors.r2 == pytest.approx(1 - 1.25 / 5)
    assert regression_errors(targets, targets).as_dict() == {"rows": 4, "mae": 0.0, "rmse": 0.0, "r2": 1.0}
    assert regression_errors(np.full(4, 1.5), targets).r2 == pytest.approx(0.0)  # the mean: no better than it
    assert regression_errors(np.array([1.0, 2.0]), np.array([1.0, 1.0])).r2 == 0.0  # labels that do not vary


def test_regression_errors_are_the_training_jobs_validation_metrics() -> None:
    import torch

    from training.loop import regression_metrics

    rng = np.random.default_rng(0)
    targets, values = rng.normal(size=50), rng.normal(size=50)
    ours = regression_errors(values, targets)
    theirs = regression_metrics(torch.from_numpy(values), torch.from_numpy(targets))
    assert (ours.mae, ours.rmse, ours.r2) == pytest.approx((theirs["mae"], theirs["rmse"], theirs["r2"]))


def test_regression_errors_need_one_value_per_label() -> None:
    with pytest.raises(ValueError, match="3 values for 2 labels"):
        regression_errors(np.zeros(3), np.zeros(2))
    with pytest.raises(ValueError, match="no rows"):
        regression_errors(np.zeros(0), np.zeros(0))


def test_regression_values_are_compared_as_one_vector() -> None:
    reference = np.array([1.0, 2.0, 3.0])
    same = compare_values(reference, reference.reshape(3, 1))
    assert (same.rows, same.mean_cosine, same.min_cosine, same.max_abs_error) == (3, 1.0, 1.0, 0.0)
    off = compare_values(reference, np.array([1.0, 2.0, -3.0]))
    assert off.rows == 3 and off.mean_cosine == pytest.approx((1 + 4 - 9) / 14) and off.max_abs_error == 6.0
    # per row, one value has only a sign: every row would be ±1
    assert compare_outputs(reference.reshape(3, 1), np.array([[1.1], [2.5], [3.9]])).min_cosine == 1.0


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
