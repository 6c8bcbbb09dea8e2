"""A tiny text model for tests that need one without exporting MiniLM: a graph over token ids
whose output ``count`` is the number of non-padding tokens of each row, declaring MiniLM's
tokenizer in its metadata as a fine-tuned text encoder does (``core.text_model``)."""

from __future__ import annotations

import onnx

from core.text_model import TEXT_KEY, TOKENIZER_KEY, TextDeclaration
from training.text_encoder import tokenizer_json


def token_count_model(max_length: int = 8) -> bytes:
    ids = onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "tokens"])
    out = onnx.helper.make_tensor_value_info("count", onnx.TensorProto.INT64, ["batch"])
    zero = onnx.helper.make_tensor("zero", onnx.TensorProto.INT64, [], [0])
    axes = onnx.helper.make_tensor("axes", onnx.TensorProto.INT64, [1], [1])
    nodes = [
        onnx.helper.make_node("Greater", ["input_ids", "zero"], ["real"]),
        onnx.helper.make_node("Cast", ["real"], ["real64"], to=onnx.TensorProto.INT64),
        onnx.helper.make_node("ReduceSum", ["real64", "axes"], ["count"], keepdims=0),
    ]
    graph = onnx.helper.make_graph(nodes, "count", [ids], [out], [zero, axes])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)])
    declared = TextDeclaration("text", "input_ids", max_length, 0)
    onnx.helper.set_model_props(
        model, {TEXT_KEY: declared.to_json(), TOKENIZER_KEY: tokenizer_json("all-minilm-l6-v2")}
    )
    return model.SerializeToString()
