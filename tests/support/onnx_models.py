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


def masked_sum() -> bytes:
    """Two INT64 inputs ``ids`` and ``mask`` ([batch, seq], seq free, like a tokenizer's output):
    ``masked = ids * mask`` (INT64 [batch, seq]) and ``total`` = its row sums as FP32 [batch]."""
    seq = ["batch", "seq"]
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["ids", "mask"], ["masked"]),
            helper.make_node("ReduceSum", ["masked", "axes"], ["sums"], keepdims=0),
            helper.make_node("Cast", ["sums"], ["total"], to=TensorProto.FLOAT),
        ],
        "masked_sum",
        [helper.make_tensor_value_info(name, TensorProto.INT64, seq) for name in ("ids", "mask")],
        [
            helper.make_tensor_value_info("masked", TensorProto.INT64, seq),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"]),
        ],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
