"""The inputs/outputs signature of an ONNX model, in Open Inference Protocol v2 terms.

Owns the mapping from ONNX element types to OIP datatype names (``FP32``, ``INT64``,
``BYTES``…) and from those to numpy dtypes, so that file validation, the model
registry and the serving code all describe tensors the same way.
"""

from __future__ import annotations

from typing import Any

import onnx

from core.text_model import declaration, text_signature

# ONNX TensorProto element type -> OIP v2 datatype name.
ONNX_TO_OIP: dict[int, str] = {
    onnx.TensorProto.BOOL: "BOOL",
    onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.UINT16: "UINT16",
    onnx.TensorProto.UINT32: "UINT32",
    onnx.TensorProto.UINT64: "UINT64",
    onnx.TensorProto.INT8: "INT8",
    onnx.TensorProto.INT16: "INT16",
    onnx.TensorProto.INT32: "INT32",
    onnx.TensorProto.INT64: "INT64",
    onnx.TensorProto.FLOAT16: "FP16",
    onnx.TensorProto.FLOAT: "FP32",
    onnx.TensorProto.DOUBLE: "FP64",
    onnx.TensorProto.STRING: "BYTES",
    onnx.TensorProto.BFLOAT16: "BF16",
}

# OIP v2 datatype -> numpy dtype string. BF16 is absent on purpose: numpy has no
# bfloat16, so serving code must carry BF16 tensors as raw 2-byte words itself.
OIP_TO_NUMPY: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}


class UnsupportedSignature(ValueError):
    """The model has an input or output that the inference protocol cannot carry."""


def read_signature(model: onnx.ModelProto) -> dict[str, list[dict[str, Any]]]:
    """``{"inputs": [{"name", "datatype", "shape"}], "outputs": [...]}`` of ``model``.

    ``shape`` holds -1 for every free or symbolic dimension, and is ``None`` when
    the model does not state the rank at all. Initializers that old exporters also
    list as graph inputs are not inputs a caller has to feed, so they are left out.

    A text model (its metadata declares a tokenizer, ``core.text_model``) shows the string
    input clients send; the graph's own inputs stay under ``graph_inputs``.
    """
    graph = model.graph
    constants = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    signature = {
        "inputs": [_describe(v, "input") for v in graph.input if v.name not in constants],
        "outputs": [_describe(v, "output") for v in graph.output],
    }
    try:
        declared = declaration({prop.key: prop.value for prop in model.metadata_props})
        return signature if declared is None else text_signature(signature, declared)
    except ValueError as exc:
        raise UnsupportedSignature(str(exc)) from exc


def _describe(value: onnx.ValueInfoProto, role: str) -> dict[str, Any]:
    if value.type.WhichOneof("value") != "tensor_type":
        kind = value.type.WhichOneof("value") or "no type"
        raise UnsupportedSignature(f"{role} '{value.name}' is not a tensor ({kind})")
    tensor = value.type.tensor_type
    datatype = ONNX_TO_OIP.get(tensor.elem_type)
    if datatype is None:
        raise UnsupportedSignature(
            f"{role} '{value.name}' has element type {_type_name(tensor.elem_type)}, which the "
            f"inference protocol cannot carry; supported: {', '.join(ONNX_TO_OIP.values())}"
        )
    shape = [_dim(d) for d in tensor.shape.dim] if tensor.HasField("shape") else None
    return {"name": value.name, "datatype": datatype, "shape": shape}


def _dim(dim: onnx.TensorShapeProto.Dimension) -> int:
    return dim.dim_value if dim.WhichOneof("value") == "dim_value" else -1


def _type_name(elem_type: int) -> str:
    try:
        return onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"#{elem_type} (unknown)"
