"""Quantization passes on small in-memory models: op types, sizes, closeness, exclusions, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from compression.fidelity import compare_outputs, make_session, run_batches
from compression.quantize import (
    ArrayCalibrationReader,
    CalibrationMismatch,
    Int8Recipe,
    QuantizationError,
    build_int8,
    check_feed,
    convert_fp16,
    model_input_specs,
    op_type_counts,
    per_row_int8,
    quantize_dynamic_int8,
    quantize_embedding_tables,
    quantize_static_int8,
    store_float_weights_fp16,
    weight_nodes,
)
from tests.support import compression_models as models


def run(path: Path, feed: dict[str, np.ndarray]) -> np.ndarray:
    return make_session(path, intra_op_threads=1).run(None, feed)[0]


def weight_dtype_of(path: Path, node_name: str) -> int:
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.name == node_name)
    initializers = {i.name: i for i in model.graph.initializer}
    return initializers[node.input[1]].data_type


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    return models.mlp(tmp_path / "mlp.onnx", hidden=256)


def test_dynamic_int8_shrinks_weights_and_stays_close(mlp_path: Path, tmp_path: Path) -> None:
    dst = quantize_dynamic_int8(mlp_path, tmp_path / "q.onnx", per_channel=True)
    ops = op_type_counts(dst)
    assert ops["MatMulInteger"] == 3 and ops["MatMul"] == 0
    assert dst.stat().st_size < 0.35 * mlp_path.stat().st_size
    x = models.inputs((64, 16))
    fidelity = compare_outputs(run(mlp_path, {"x": x}), run(dst, {"x": x}))
    assert fidelity.mean_cosine > 0.995


def test_excluded_node_stays_float(mlp_path: Path, tmp_path: Path) -> None:
    dst = quantize_dynamic_int8(mlp_path, tmp_path / "q.onnx", exclude_nodes=["fc2"])
    ops = op_type_counts(dst)
    assert ops["MatMulInteger"] == 2 and ops["MatMul"] == 1
    assert weight_dtype_of(dst, "fc2") == onnx.TensorProto.FLOAT


def test_excluding_an_unknown_node_is_an_error(mlp_path: Path, tmp_path: Path) -> None:
    with pytest.raises(QuantizationError, match="fc9"):
        quantize_dynamic_int8(mlp_path, tmp_path / "q.onnx", exclude_nodes=["fc9"])


def test_excluded_op_type_stays_float(tmp_path: Path) -> None:
    src = models.conv_net(tmp_path / "cnn.onnx")
    dst = quantize_dynamic_int8(src, tmp_path / "q.onnx", exclude_op_types=["Conv"])
    ops = op_type_counts(dst)
    assert ops["Conv"] == 1 and ops["ConvInteger"] == 0 and ops["MatMulInteger"] == 1


def test_static_qdq_calibrated(tmp_path: Path) -> None:
    src = models.conv_net(tmp_path / "cnn.onnx")
    calibration = ArrayCalibrationReader.from_arrays({"x": models.inputs((64, 1, 12, 12), seed=2)}, batch_size=16)
    dst = quantize_static_int8(src, tmp_path / "qdq.onnx", calibration, exclude_nodes=["fc"])
    ops = op_type_counts(dst)
    assert ops["QuantizeLinear"] >= 1 and ops["DequantizeLinear"] >= 2
    assert weight_dtype_of(dst, "fc") == onnx.TensorProto.FLOAT
    x = models.inputs((32, 1, 12, 12), seed=3)
    fidelity = compare_outputs(run(src, {"x": x}), run(dst, {"x": x}))
    assert fidelity.mean_cosine > 0.99


def test_static_qdq_shrinks_every_weight(tmp_path: Path) -> None:
    src = models.mlp(tmp_path / "mlp.onnx", hidden=256)
    calibration = [{"x": models.inputs((16, 16), seed=s)} for s in range(4)]
    dst = quantize_static_int8(src, tmp_path / "qdq.onnx", calibration, per_channel=True, calibrate_method="minmax")
    assert dst.stat().st_size < 0.35 * src.stat().st_size
    x = models.inputs((64, 16))
    assert compare_outputs(run(src, {"x": x}), run(dst, {"x": x})).mean_cosine > 0.99


@pytest.mark.parametrize(
    ("feed", "what"),
    [
        ({"x": np.zeros((4, 15), np.float32)}, "(batch, 16)"),
        ({"x": np.zeros((4, 16, 1), np.float32)}, "(batch, 16)"),
        ({"x": np.zeros((4, 16), np.int64)}, "float32"),
        ({}, "nothing"),
    ],
)
def test_calibration_mismatch_names_the_input(
    mlp_path: Path, tmp_path: Path, feed: dict[str, np.ndarray], what: str
) -> None:
    with pytest.raises(CalibrationMismatch) as caught:
        quantize_static_int8(mlp_path, tmp_path / "qdq.onnx", [feed])
    assert caught.value.input_name == "x"
    assert "'x'" in str(caught.value) and what in str(caught.value)
    assert not (tmp_path / "qdq.onnx").exists()


def test_calibration_mismatch_states_both_shapes(mlp_path: Path) -> None:
    specs = model_input_specs(mlp_path)
    with pytest.raises(CalibrationMismatch, match=r"expects shape \(batch, 16\), got \(4, 15\)"):
        check_feed(specs, {"x": np.zeros((4, 15), np.float32)})
    with pytest.raises(CalibrationMismatch, match="unknown input"):
        check_feed(specs, {"x": np.zeros((4, 16), np.float32), "z": np.zeros(1)})


def test_array_reader_batches_and_rewinds() -> None:
    reader = ArrayCalibrationReader.from_arrays({"x": np.arange(10, dtype=np.float32).reshape(10, 1)}, batch_size=4)
    sizes = [feed["x"].shape[0] for feed in iter(reader.get_next, None)]
    assert sizes == [4, 4, 2] and len(reader) == 3
    reader.rewind()
    assert reader.get_next()["x"][0, 0] == 0.0
    with pytest.raises(QuantizationError):
        ArrayCalibrationReader.from_arrays({"a": np.zeros((3, 1)), "b": np.zeros((4, 1))}, batch_size=2)


def test_input_specs_keep_symbolic_dims(mlp_path: Path) -> None:
    spec = model_input_specs(mlp_path)["x"]
    assert spec.shape == ("batch", 16) and spec.dtype == np.float32


def test_fp16_halves_the_file_and_keeps_float32_io(mlp_path: Path, tmp_path: Path) -> None:
    dst = convert_fp16(mlp_path, tmp_path / "half.onnx", exclude_op_types=["Relu"])
    model = onnx.load(str(dst))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert {i.data_type for i in model.graph.initializer} == {onnx.TensorProto.FLOAT16}
    assert dst.stat().st_size < 0.55 * mlp_path.stat().st_size
    relu_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Relu"}
    cast_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Cast"}
    assert relu_inputs <= cast_outputs  # the blocked op runs in fp32 behind Casts
    x = models.inputs((32, 16))
    np.testing.assert_allclose(run(dst, {"x": x}), run(mlp_path, {"x": x}), atol=2e-2, rtol=2e-2)


def test_per_row_int8_round_trip() -> None:
    table = np.array([[0.0, 0.0], [1.0, -0.5], [100.0, 3.0]], dtype=np.float32)
    q, scale = per_row_int8(table)
    assert q.dtype == np.int8 and scale.shape == (3, 1)
    np.testing.assert_allclose(q * scale, table, atol=100.0 / 254)
    assert q[1, 0] == 127 and scale[0, 0] == 1.0


def test_embedding_tables_become_int8_rows(tmp_path: Path) -> None:
    src = models.bag_of_embeddings(tmp_path / "bag.onnx")
    model = onnx.load(str(src))
    assert quantize_embedding_tables(model) == ["embed"]
    dst = tmp_path / "bag.int8.onnx"
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    table = next(i for i in model.graph.initializer if i.name == "table_int8")
    assert table.data_type == onnx.TensorProto.INT8
    assert dst.stat().st_size < 0.35 * src.stat().st_size
    ids = np.random.default_rng(0).integers(0, 2000, size=(32, 12), dtype=np.int64)
    fidelity = compare_outputs(run(src, {"ids": ids}), run(dst, {"ids": ids}))
    assert fidelity.min_cosine > 0.999


def test_float_weights_stored_as_fp16_run_in_fp32(mlp_path: Path, tmp_path: Path) -> None:
    model = onnx.load(str(mlp_path))
    assert store_float_weights_fp16(model, ["fc2"]) == ["fc2.weight"]
    dst = tmp_path / "fp16w.onnx"
    onnx.save(model, str(dst))
    onnx.checker.check_model(str(dst))
    stored = {i.name: i.data_type for i in model.graph.initializer}
    assert stored["fc2.weight_fp16"] == onnx.TensorProto.FLOAT16 and "fc2.weight" not in stored
    x = models.inputs((16, 16))
    np.testing.assert_allclose(run(dst, {"x": x}), run(mlp_path, {"x": x}), atol=1e-2)


def test_recipe_with_float_node_and_row_embeddings(tmp_path: Path) -> None:
    src = models.bag_of_embeddings(tmp_path / "bag.onnx")
    dst = build_int8(src, tmp_path / "q.onnx", Int8Recipe(float_weights="fp16"), float_nodes=["proj"])
    ops = op_type_counts(dst)
    assert ops["MatMul"] == 1 and ops["MatMulInteger"] == 0 and ops["Cast"] >= 2
    ids = np.random.default_rng(1).integers(0, 2000, size=(8, 5), dtype=np.int64)
    out = run_batches(dst, [{"ids": ids}], intra_op_threads=1)
    assert compare_outputs(run(src, {"ids": ids}), out).mean_cosine > 0.999


def test_weight_nodes_lists_constant_weights_only(tmp_path: Path) -> None:
    src = models.conv_net(tmp_path / "cnn.onnx")
    found = {n.name: n for n in weight_nodes(src)}
    assert set(found) == {"conv", "fc"}
    assert found["fc"].weight_elements == 1600 * 10


def test_static_exclusion_follows_fused_nodes(mlp_path: Path, tmp_path: Path) -> None:
    calibration = [{"x": models.inputs((16, 16), seed=s)} for s in range(2)]
    dst = quantize_static_int8(mlp_path, tmp_path / "qdq.onnx", calibration, exclude_nodes=["fc2"])
    model = onnx.load(str(dst))
    fused = next(n for n in model.graph.node if "fc2.weight" in n.input)
    assert fused.name.startswith("fc2")  # ORT's optimiser fused MatMul + Add into a Gemm
    assert weight_dtype_of(dst, fused.name) == onnx.TensorProto.FLOAT
    quantized_weights = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert any(name.startswith("fc1.weight") for name in quantized_weights)


def test_array_reader_windows_for_strided_calibration() -> None:
    reader = ArrayCalibrationReader([{"x": np.full((1, 1), i, np.float32)} for i in range(5)])
    reader.set_range(1, 3)
    assert [int(feed["x"][0, 0]) for feed in iter(reader.get_next, None)] == [1, 2]
    reader.set_range(3, 9)
    assert [int(feed["x"][0, 0]) for feed in iter(reader.get_next, None)] == [3, 4]
    reader.rewind()
    assert len(list(iter(reader.get_next, None))) == 5
