"""Small ONNX models built in memory for the compression tests (no downloads, no torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def mlp(
    path: Path,
    *,
    features: int = 16,
    hidden: int = 128,
    outputs: int = 8,
    seed: int = 0,
    outlier_in_fc2: bool = False,
) -> Path:
    """x (batch, features) -> fc1 -> Relu -> fc2 -> Relu -> fc3 -> y, nodes named fc1..fc3.

    ``outlier_in_fc2`` gives fc2 a row of huge weights on an input that Relu always zeroes: the
    float function is unchanged, but per-tensor int8 weights round the rest of fc2 to zero.
    """
    rng = np.random.default_rng(seed)
    shapes = {"fc1": (features, hidden), "fc2": (hidden, hidden), "fc3": (hidden, outputs)}
    weights = {
        name: (rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32) for name, shape in shapes.items()
    }
    biases = {name: (rng.standard_normal(shape[1]) * 0.1).astype(np.float32) for name, shape in shapes.items()}
    if outlier_in_fc2:
        biases["fc1"][0] = -1e4
        weights["fc2"][0, :] = 500.0
    initializers = [numpy_helper.from_array(w, f"{name}.weight") for name, w in weights.items()]
    initializers += [numpy_helper.from_array(b, f"{name}.bias") for name, b in biases.items()]
    nodes = [
        helper.make_node("MatMul", ["x", "fc1.weight"], ["h1"], name="fc1"),
        helper.make_node("Add", ["h1", "fc1.bias"], ["a1"], name="fc1_bias"),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "fc2.weight"], ["h2"], name="fc2"),
        helper.make_node("Add", ["h2", "fc2.bias"], ["a2"], name="fc2_bias"),
        helper.make_node("Relu", ["a2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "fc3.weight"], ["h3"], name="fc3"),
        helper.make_node("Add", ["h3", "fc3.bias"], ["y"], name="fc3_bias"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", outputs])],
        initializers,
    )
    return _save(graph, path)


def conv_net(path: Path, *, seed: int = 0) -> Path:
    """x (batch, 1, 12, 12) -> conv (16 filters 3x3) -> Relu -> Flatten -> fc -> y (batch, 10)."""
    rng = np.random.default_rng(seed)
    conv_w = (rng.standard_normal((16, 1, 3, 3)) / 3).astype(np.float32)
    conv_b = (rng.standard_normal(16) * 0.1).astype(np.float32)
    fc_w = (rng.standard_normal((16 * 10 * 10, 10)) / 40).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "conv.weight", "conv.bias"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten", axis=1),
        helper.make_node("MatMul", ["f", "fc.weight"], ["y"], name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [
            numpy_helper.from_array(conv_w, "conv.weight"),
            numpy_helper.from_array(conv_b, "conv.bias"),
            numpy_helper.from_array(fc_w, "fc.weight"),
        ],
    )
    return _save(graph, path)


def bag_of_embeddings(path: Path, *, vocab: int = 2000, dim: int = 64, seed: int = 0) -> Path:
    """ids (batch, seq) int64 -> Gather(table) -> ReduceMean over seq -> MatMul -> y (batch, 16)."""
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((vocab, dim)).astype(np.float32)
    table *= rng.uniform(0.01, 3.0, size=(vocab, 1)).astype(np.float32)  # rows of very different norms
    proj = (rng.standard_normal((dim, 16)) / 8).astype(np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed", axis=0),
        helper.make_node("ReduceMean", ["e"], ["m"], name="pool", axes=[1], keepdims=0),
        helper.make_node("MatMul", ["m", "proj"], ["y"], name="proj"),
    ]
    graph = helper.make_graph(
        nodes,
        "bag",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(proj, "proj")],
    )
    return _save(graph, path)


def outlier_activations(path: Path, *, features: int = 64, seed: int = 0) -> Path:
    """x -> Mul(per-channel gains, channel 0 x200) -> fc1 -> Relu -> fc2: one outlier input channel."""
    rng = np.random.default_rng(seed)
    gains = np.ones(features, dtype=np.float32)
    gains[0] = 200.0
    w1 = (rng.standard_normal((features, 128)) / 8).astype(np.float32)
    w1[0] /= 200.0  # the float model stays well scaled; only the activation range is skewed
    w2 = (rng.standard_normal((128, 8)) / 11).astype(np.float32)
    nodes = [
        helper.make_node("Mul", ["x", "gains"], ["g"], name="gain"),
        helper.make_node("MatMul", ["g", "fc1.weight"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "fc2.weight"], ["y"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes,
        "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [
            numpy_helper.from_array(gains, "gains"),
            numpy_helper.from_array(w1, "fc1.weight"),
            numpy_helper.from_array(w2, "fc2.weight"),
        ],
    )
    return _save(graph, path)


def inputs(shape: tuple[int, ...], *, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def masked_mean_encoder(path: Path, *, vocab: int = 500, dim: int = 32, width: int = 16, seed: int = 0) -> Path:
    """A sentence encoder in miniature, with a tokenizer's two inputs: ``input_ids`` and
    ``attention_mask`` (int64 [batch, seq]) -> embedding lookup -> mean over the unmasked tokens
    -> MatMul -> Relu -> MatMul -> ``embedding`` (float [batch, width])."""
    rng = np.random.default_rng(seed)
    initializers = [
        numpy_helper.from_array(rng.standard_normal((vocab, dim)).astype(np.float32), "table"),
        numpy_helper.from_array((rng.standard_normal((dim, 64)) / 6).astype(np.float32), "fc1.weight"),
        numpy_helper.from_array((rng.standard_normal((64, width)) / 8).astype(np.float32), "fc2.weight"),
        numpy_helper.from_array(np.array([1], np.int64), "seq_axis"),
        numpy_helper.from_array(np.array([2], np.int64), "last_axis"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["tokens"], name="embed", axis=0),
        helper.make_node("Cast", ["attention_mask"], ["mask"], name="mask", to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask", "last_axis"], ["mask3"], name="mask3"),
        helper.make_node("Mul", ["tokens", "mask3"], ["kept"], name="keep"),
        helper.make_node("ReduceSum", ["kept", "seq_axis"], ["summed"], name="sum", keepdims=0),
        helper.make_node("ReduceSum", ["mask3", "seq_axis"], ["count"], name="count", keepdims=0),
        helper.make_node("Max", ["count", "one"], ["count1"], name="at_least_one"),
        helper.make_node("Div", ["summed", "count1"], ["mean"], name="mean"),
        helper.make_node("MatMul", ["mean", "fc1.weight"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "fc2.weight"], ["embedding"], name="fc2"),
    ]
    seq = ["batch", "sequence"]
    graph = helper.make_graph(
        nodes,
        "masked_mean",
        [helper.make_tensor_value_info(name, TensorProto.INT64, seq) for name in ("input_ids", "attention_mask")],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", width])],
        initializers,
    )
    return _save(graph, path)


def token_batch(rows: int, *, vocab: int = 500, length: int = 12, seed: int = 1) -> dict[str, np.ndarray]:
    """``input_ids`` and ``attention_mask`` as a tokenizer pads them: each row 3 to ``length``
    tokens long, zeros after."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, length + 1, size=rows)
    mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(1, vocab, size=(rows, length)).astype(np.int64) * mask
    return {"input_ids": ids, "attention_mask": mask}
