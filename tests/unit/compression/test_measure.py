"""Report measurements on models whose answers are known: parameter counts, raw and gzip
bytes, accuracy and fidelity math through ONNX Runtime, and the speed numbers' shape."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.nn.utils import prune

from compression.measure import (
    count_tensors,
    file_size,
    gzip_size,
    items_per_second,
    measure,
    measure_speed,
    onnx_accuracy,
    onnx_fidelity,
    onnx_outputs,
    onnx_parameter_counts,
    parameter_counts,
    percentile_ms,
    take_rows,
)


def matmul_model(path: Path, weight: np.ndarray, *, with_shape_constant: bool = False) -> Path:
    """x (batch, n) -> MatMul(weight) -> y (batch, m)."""
    initializers = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")]
    if with_shape_constant:  # an int64 initializer is not a parameter
        initializers.append(numpy_helper.from_array(np.array([-1, weight.shape[1]], dtype=np.int64), "shape"))
        nodes = [
            helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
            helper.make_node("Reshape", ["h", "shape"], ["y"], name="reshape"),
        ]
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture
def identity(tmp_path: Path) -> Path:
    return matmul_model(tmp_path / "identity.onnx", np.eye(3))


# --- parameters --------------------------------------------------------------------------------


def test_parameter_counts_of_a_torch_model() -> None:
    layer = nn.Linear(4, 3)
    with torch.no_grad():
        layer.weight[0] = 0
        layer.bias.zero_()
    assert parameter_counts(layer).as_dict() == {"total": 15, "nonzero": 8}
    assert parameter_counts(layer).sparsity == pytest.approx(7 / 15)


def test_an_active_prune_mask_counts_as_pruned_and_the_dense_copy_is_not_counted() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(10, 10)
    prune.l1_unstructured(layer, "weight", amount=0.3)  # still a reparametrisation: weight_orig + mask
    counts = parameter_counts(layer)
    assert counts.total == 110
    assert counts.nonzero == 110 - 30


def test_onnx_parameter_counts_read_float_initializers(tmp_path: Path) -> None:
    weight = np.arange(12, dtype=np.float32).reshape(4, 3)  # one zero
    counts = onnx_parameter_counts(matmul_model(tmp_path / "m.onnx", weight, with_shape_constant=True))
    assert (counts.total, counts.nonzero) == (12, 11)


def test_count_tensors_accepts_numpy_and_torch() -> None:
    counts = count_tensors([np.array([0.0, 1.0]), torch.tensor([[0.0, 0.0], [2.0, 3.0]])])
    assert (counts.total, counts.nonzero) == (6, 3)
    assert count_tensors([]).sparsity == 0.0


# --- bytes -------------------------------------------------------------------------------------


def test_gzip_shows_what_unstructured_sparsity_saves(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((256, 256)).astype(np.float32)
    sparse = np.where(rng.random(dense.shape) < 0.9, 0.0, dense).astype(np.float32)
    dense_size = file_size(matmul_model(tmp_path / "dense.onnx", dense))
    sparse_size = file_size(matmul_model(tmp_path / "sparse.onnx", sparse))
    assert sparse_size.bytes == dense_size.bytes, "zeros take as many raw bytes as any float"
    assert dense_size.gzip_bytes > 0.85 * dense_size.bytes, "random floats barely compress"
    assert sparse_size.gzip_bytes < 0.3 * dense_size.gzip_bytes
    assert sparse_size.as_dict() == {"bytes": sparse_size.bytes, "gzip_bytes": sparse_size.gzip_bytes}


def test_gzip_size_is_repeatable() -> None:
    data = b"abc" * 1000
    assert gzip_size(data) == gzip_size(data) < len(data)


# --- accuracy and fidelity ---------------------------------------------------------------------


def test_accuracy_of_an_onnx_model(identity: Path) -> None:
    x = np.array([[3, 1, 0], [0, 2, 1], [0, 0, 5], [1, 4, 0]], dtype=np.float32)  # argmax 0, 1, 2, 1
    assert onnx_accuracy(identity, x, np.array([0, 1, 2, 1])) == 1.0
    assert onnx_accuracy(identity, x, np.array([0, 1, 0, 0])) == 0.5
    assert onnx_accuracy(identity, x, np.array([0, 1, 0, 0]), batch_size=3) == 0.5, "batches do not matter"


def test_fidelity_against_reference_outputs(identity: Path, tmp_path: Path) -> None:
    x = np.random.default_rng(1).standard_normal((7, 3)).astype(np.float32)
    same = onnx_fidelity(identity, x, x)
    assert (same.mean_cosine, same.min_cosine, same.max_abs_error) == (pytest.approx(1.0), pytest.approx(1.0), 0.0)
    doubled = onnx_fidelity(matmul_model(tmp_path / "double.onnx", 2 * np.eye(3)), x, x)
    assert doubled.mean_cosine == pytest.approx(1.0), "scale does not change direction"
    assert doubled.max_abs_error == pytest.approx(float(np.abs(x).max()))
    flipped = onnx_fidelity(matmul_model(tmp_path / "neg.onnx", -np.eye(3)), x, x)
    assert flipped.mean_cosine == pytest.approx(-1.0)


def test_outputs_accept_a_feed_mapping_and_wrap_rows(identity: Path) -> None:
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert np.array_equal(onnx_outputs(identity, {"x": x, "unused": x}), x)
    wrapped = take_rows({"x": x}, 1, 3)["x"]
    assert np.array_equal(wrapped, x[[1, 0, 1]])
    with pytest.raises(ValueError, match="no rows"):
        onnx_outputs(identity, np.zeros((0, 3), dtype=np.float32))


# --- speed -------------------------------------------------------------------------------------


def test_percentiles_and_rates() -> None:
    assert percentile_ms([0.001, 0.002, 0.003], 50) == pytest.approx(2.0)
    assert percentile_ms([0.001, 0.003], 50) == pytest.approx(2.0)
    assert items_per_second(32, [0.01, 0.02, 1.0]) == pytest.approx(1600.0), "the median resists outliers"
    with pytest.raises(ValueError):
        percentile_ms([], 50)


def test_measure_speed_returns_numbers_for_the_settings_asked(identity: Path) -> None:
    x = np.ones((4, 3), dtype=np.float32)
    speed = measure_speed(identity, x, threads=1, warmup=2, latency_iterations=20, throughput_iterations=5)
    assert speed.latency_p50_ms > 0 and speed.latency_p90_ms >= speed.latency_p50_ms
    assert speed.throughput_items_per_s > 0 and math.isfinite(speed.throughput_items_per_s)
    assert (speed.throughput_batch, speed.intra_op_threads, speed.latency_iterations) == (32, 1, 20)
    with pytest.raises(ValueError):
        measure_speed(identity, x, latency_iterations=0)


def test_measure_gathers_one_report_row(identity: Path) -> None:
    x = np.eye(3, dtype=np.float32)
    options = {"warmup": 1, "latency_iterations": 5, "throughput_iterations": 2}
    row = measure(identity, x, y=np.array([0, 1, 1]), reference=x, **options).as_dict()
    assert (row["parameters"], row["nonzero_parameters"]) == (9, 3)
    assert row["onnx_bytes"] == identity.stat().st_size and row["onnx_gzip_bytes"] > 0
    assert row["accuracy"] == pytest.approx(2 / 3)
    assert row["fidelity"]["mean_cosine"] == pytest.approx(1.0)
    assert row["speed"]["latency_p50_ms"] > 0
    bare = measure(identity, x, speed=False, torch_model=nn.Linear(3, 3, bias=False)).as_dict()
    assert (bare["accuracy"], bare["fidelity"], bare["speed"], bare["parameters"]) == (None, None, None, 9)
