"""Small ONNX models built with onnx.helper, for serving tests."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper


def linear_classifier(weight: np.ndarray, bias: np.ndarray, *, batch: str | int = "batch") -> bytes:
    """``scores = x @ weight + bias`` (FP32, [batch, 3]) and ``label = argmax(scores)`` (INT64, [batch])."""
    inputs, classes = weight.shape
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, inputs])],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, classes]),
            helper.make_tensor_value_info("label", TensorProto.INT64, [batch]),
        ],
        [
            helper.make_tensor("W", TensorProto.FLOAT, list(weight.shape), weight.astype(np.float32).ravel()),
            helper.make_tensor("b", TensorProto.FLOAT, [classes], bias.astype(np.float32).ravel()),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
