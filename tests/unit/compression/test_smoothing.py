"""Activation smoothing keeps the float function and helps int8 on outlier channels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from compression.fidelity import compare_outputs, make_session
from compression.quantize import quantize_dynamic_int8
from compression.smoothing import smooth_onnx, smoothable_groups, smoothing_scales
from tests.support import compression_models as models


def outputs(path: Path, x: np.ndarray) -> np.ndarray:
    return make_session(path, intra_op_threads=1).run(None, {"x": x})[0]


def test_scales_balance_activation_and_weight_peaks() -> None:
    scales = smoothing_scales(np.array([100.0, 1.0, 0.0]), np.array([1.0, 4.0, 2.0]), alpha=0.5)
    np.testing.assert_allclose(scales, [10.0, 0.5, 1.0], rtol=1e-6)


def test_groups_share_one_activation(tmp_path: Path) -> None:
    groups = smoothable_groups(onnx.load(str(models.outlier_activations(tmp_path / "m.onnx"))))
    assert [(g.activation, g.nodes) for g in groups] == [("g", ("fc1",)), ("r", ("fc2",))]


def test_smoothing_keeps_the_float_function_and_helps_int8(tmp_path: Path) -> None:
    src = models.outlier_activations(tmp_path / "m.onnx")
    calibration = [{"x": models.inputs((64, 64), seed=s)} for s in range(2)]
    smoothed = tmp_path / "smoothed.onnx"
    done = smooth_onnx(src, smoothed, calibration, alpha=0.5)
    assert {g.activation for g in done} == {"g", "r"}
    x = models.inputs((32, 64), seed=5)
    np.testing.assert_allclose(outputs(smoothed, x), outputs(src, x), rtol=1e-4, atol=1e-4)

    plain = quantize_dynamic_int8(src, tmp_path / "plain.int8.onnx", per_channel=True)
    helped = quantize_dynamic_int8(smoothed, tmp_path / "smoothed.int8.onnx", per_channel=True)
    reference = outputs(src, x)
    plain_cos = compare_outputs(reference, outputs(plain, x)).mean_cosine
    helped_cos = compare_outputs(reference, outputs(helped, x)).mean_cosine
    assert helped_cos > plain_cos and helped_cos > 0.999


def test_smoothing_a_matmul_that_reads_a_graph_input(tmp_path: Path) -> None:
    src = models.mlp(tmp_path / "mlp.onnx")  # fc1 reads the input x directly; nodes keep their names
    calibration = [{"x": models.inputs((32, 16), seed=4)}]
    done = smooth_onnx(src, tmp_path / "smoothed.onnx", calibration, alpha=0.5)
    assert {g.activation for g in done} == {"x", "r1", "r2"}
    x = models.inputs((8, 16), seed=6)
    np.testing.assert_allclose(outputs(tmp_path / "smoothed.onnx", x), outputs(src, x), rtol=1e-4, atol=1e-4)
