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


def tiny_onnx() -> bytes:
    """``y = x @ W`` (FP32 [batch, 4] to [batch, 3]), W all 0.1: the smallest model the registry takes."""
    weight = helper.make_tensor("W", TensorProto.FLOAT, [4, 3], [0.1] * 12)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


_RNG = np.random.default_rng(0)
_WEIGHTS = [_RNG.normal(size=(4, 3)).astype(np.float32) for _ in range(2)]
_BIASES = [_RNG.normal(size=3).astype(np.float32) for _ in range(2)]
LINEAR_MODELS = [linear_classifier(w, b) for w, b in zip(_WEIGHTS, _BIASES, strict=True)]
"""Two linear classifiers (4 inputs, 3 classes) with fixed random weights, to deploy and switch between."""


def linear_expected(x: np.ndarray, index: int = 0) -> dict[str, np.ndarray]:
    """What ONNX Runtime answers for ``x`` on ``LINEAR_MODELS[index]``."""
    import onnxruntime as ort

    session = ort.InferenceSession(LINEAR_MODELS[index], providers=["CPUExecutionProvider"])
    scores, label = session.run(["scores", "label"], {"x": x})
    return {"scores": scores, "label": label}


def embedding_lookup(rows: int = 8, width: int = 4) -> bytes:
    """A Gather over an embedding table of ``rows`` rows, like a transformer's token or position embeddings:
    ``ids`` (INT64 [batch, seq]) in, ``embedded`` (FP32 [batch, seq, width], row ``i`` of the table all ``i``) out.
    ONNX Runtime refuses an id of ``rows`` or more at run time, as MiniLM refuses more than 512 positions."""
    table = np.repeat(np.arange(rows, dtype=np.float32)[:, None], width, axis=1)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["embedded"], name="embeddings", axis=0)],
        "embedding_lookup",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedded", TensorProto.FLOAT, ["batch", "seq", width])],
        [helper.make_tensor("table", TensorProto.FLOAT, [rows, width], table.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()
