"""Open Inference Protocol tensors over gRPC: ``ModelInferRequest`` in, numpy arrays out, and back.

The gRPC twin of ``core.tensor_codec``'s REST decoding, built on its pieces (datatype, shape and
element-limit checks, raw little-endian and length-prefixed BYTES layouts, requested outputs), so
both transports accept and refuse the same tensors with the same words. A tensor travels either in
its typed ``contents`` or, for every input at once, in ``raw_input_contents`` (FP16 only this
way); outputs go back raw when the request came raw (as tritonclient.grpc sends and expects) or
when one of them has no typed field (FP16), in ``contents`` otherwise. Pure: protobuf messages
and numpy, no I/O; malformed requests raise :class:`~core.tensor_codec.CodecError` naming the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from api.oip_grpc import open_inference_grpc_pb2 as pb
from core.onnx_signature import OIP_TO_NUMPY
from core.tensor_codec import (
    CodecError,
    InferenceRequest,
    Tensor,
    bytes_elements,
    check_tensor_header,
    datatype_of,
    requested_outputs,
    selected_outputs,
    serialize_bytes_tensor,
    tensor_from_raw,
)

# the typed field of InferTensorContents that carries each datatype (FP16 and BF16 have none: raw only)
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
# what a field's values are before they are narrowed to the datatype (int_contents holds int32s)
_FIELD_DTYPE = {
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
    "bool_contents": np.bool_,
}


def parameters_of(parameters: Mapping[str, pb.InferParameter]) -> dict[str, Any]:
    """A protobuf parameter map as plain values (bool, int, str or float)."""
    values: dict[str, Any] = {}
    if not parameters:  # the usual case: no map to walk
        return values
    for key, parameter in parameters.items():
        choice = parameter.WhichOneof("parameter_choice")
        values[key] = getattr(parameter, choice) if choice else None
    return values


def decode_infer_request(message: pb.ModelInferRequest, max_elements: int | None) -> InferenceRequest:
    """The request's tensors as numpy arrays, checked as REST requests are; raises ``CodecError``."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise CodecError(
            f"the request has {len(message.inputs)} inputs but {len(raw)} raw_input_contents; "
            "send one raw entry per input, in the order of 'inputs'"
        )
    tensors: list[Tensor] = []
    seen: set[str] = set()
    for index, spec in enumerate(message.inputs):
        label = f"input '{spec.name}'" if spec.name else f"input #{index}"
        parameters = parameters_of(spec.parameters)
        datatype, shape = check_tensor_header(spec.name, spec.datatype, spec.shape, parameters, max_elements)
        if spec.name in seen:
            raise CodecError(f"{label} appears more than once; input names must be unique")
        seen.add(spec.name)
        if raw:
            if spec.HasField("contents"):
                raise CodecError(f"{label} has contents but the request uses raw_input_contents; send it one way")
            data = _from_raw(raw[index], datatype, shape, label)
        else:
            data = _from_contents(spec.contents, datatype, shape, label)
        tensors.append(Tensor(spec.name, datatype, data, parameters))
    outputs = [{"name": o.name, "parameters": parameters_of(o.parameters)} for o in message.outputs]
    return InferenceRequest(
        inputs=tensors,
        outputs=requested_outputs(outputs),
        id=message.id or None,
        parameters=parameters_of(message.parameters),
    )


def _from_raw(chunk: bytes, datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray:
    if datatype != "BYTES":
        expected = math.prod(shape) * np.dtype(OIP_TO_NUMPY[datatype]).itemsize
        if len(chunk) != expected:
            raise CodecError(
                f"{label} has {len(chunk)} bytes of raw_input_contents but shape {list(shape)} of {datatype} "
                f"needs {expected}"
            )
    return tensor_from_raw(chunk, datatype, shape, label)


def _from_contents(contents: pb.InferTensorContents, datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(datatype)
    if field is None:
        raise CodecError(f"{label} is {datatype}, which has no typed contents; send it in raw_input_contents")
    others = [descriptor.name for descriptor, _ in contents.ListFields() if descriptor.name != field]
    if others:
        raise CodecError(f"{label} is {datatype} but its contents hold {others[0]}; {datatype} goes in {field}")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise CodecError(
            f"{label} has {len(values)} elements in contents.{field} but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        elements = np.empty(count, dtype=object)
        elements[:] = list(values)
        return elements.reshape(shape)
    array: np.ndarray = np.array(values, dtype=_FIELD_DTYPE[field])
    target = np.dtype(OIP_TO_NUMPY[datatype])
    if target != array.dtype:  # INT8/INT16 in int32s, UINT8/UINT16 in uint32s: must fit
        limits = np.iinfo(target)
        if array.size and (array.min() < limits.min or array.max() > limits.max):
            raise CodecError(
                f"{label} is {datatype} but contents.{field} holds values outside [{limits.min}, {limits.max}]"
            )
        array = array.astype(target)
    return array.reshape(shape)


def encode_infer_response(
    outputs: Mapping[str, np.ndarray],
    request: InferenceRequest,
    *,
    raw: bool,
    model_name: str,
    model_version: str,
) -> pb.ModelInferResponse:
    """The response: the outputs the request named (all when none), raw when ``raw`` or when one has no typed field."""
    names = selected_outputs(outputs, request)
    datatypes = [datatype_of(outputs[name], f"output '{name}'") for name in names]
    raw = raw or any(datatype not in CONTENTS_FIELD for datatype in datatypes)
    response = pb.ModelInferResponse(model_name=model_name, model_version=model_version, id=request.id or "")
    for name, datatype in zip(names, datatypes, strict=True):
        array = outputs[name]
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            response.raw_output_contents.append(_raw_bytes(array, datatype))
        elif datatype == "BYTES":
            tensor.contents.bytes_contents.extend(bytes_elements(array))
        else:
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.reshape(-1).tolist())
    return response


def _raw_bytes(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        return serialize_bytes_tensor(array)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
