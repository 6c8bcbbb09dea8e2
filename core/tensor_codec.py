"""Open Inference Protocol v2 tensors: request bodies in, numpy arrays out, and back.

Owns the KServe/Triton REST wire format in both its forms: plain JSON and the binary
tensor data extension (a JSON header of ``Inference-Header-Content-Length`` bytes
followed by raw little-endian tensor bytes; BYTES elements as 4-byte little-endian
length prefixes followed by the element). It is shared by the synchronous ``/v2``
infer route, ``/v1/predictions`` and batch inference jobs, so it works on bytes,
dicts and numpy only: no HTTP framework, no model runtime, no I/O.

Every malformed request raises :class:`CodecError` with a message that names the
tensor at fault; the caller turns it into ``400 {"error": message}``.

    request = decode_request(body, headers.get("Inference-Header-Content-Length"), max_elements=1 << 24)
    validate_against_signature(request.inputs, signature, outputs=request.outputs)
    outputs = run(request.arrays())
    body, header_length = encode_response(outputs, model_name="digits", model_version="3", request=request)
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.onnx_signature import OIP_TO_NUMPY

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"

_NUMPY_TO_OIP: dict[str, str] = {dtype: name for name, dtype in OIP_TO_NUMPY.items() if name != "BYTES"}
# by dtype object too: numpy computes ``dtype.name`` in Python (microseconds), a dict lookup by dtype is ~0.1 us
_OIP_OF_DTYPE: dict[np.dtype, str] = {np.dtype(dtype): name for dtype, name in _NUMPY_TO_OIP.items()}
_BYTES_KINDS = frozenset("OUS")
_LENGTH_PREFIX = struct.Struct("<I")

# Which Python types a JSON element may have for each datatype. Strict like Triton:
# a bool is not a number and "1.5" is not a float, even though numpy would convert both.
_JSON_ELEMENT_TYPES: dict[str, tuple[frozenset[type], str]] = {
    "BOOL": (frozenset({bool}), "a boolean"),
    "BYTES": (frozenset({str}), "a string"),
    **dict.fromkeys(
        ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"), (frozenset({int}), "an integer")
    ),
    **dict.fromkeys(("FP16", "FP32", "FP64"), (frozenset({int, float}), "a number")),
}


class CodecError(ValueError):
    """The request (or a model output) cannot be carried by the protocol; the message names the tensor."""


@dataclass(frozen=True)
class Tensor:
    """One decoded input tensor: ``data`` already has ``shape`` and the numpy dtype of ``datatype``.

    Arrays decoded from the binary part are read-only views of the request body.
    """

    name: str
    datatype: str
    data: np.ndarray
    parameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> list[int]:
        return list(self.data.shape)


@dataclass(frozen=True)
class RequestedOutput:
    """An entry of the request's ``outputs``; ``binary_data`` is None when the client did not say."""

    name: str
    binary_data: bool | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InferenceRequest:
    """A decoded inference request; empty ``outputs`` means every output of the model."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    id: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        return {tensor.name: tensor.data for tensor in self.inputs}

    def wants_binary(self, output_name: str) -> bool:
        """An output's own ``binary_data`` wins; otherwise the request-wide ``binary_data_output``."""
        for requested in self.outputs:
            if requested.name == output_name and requested.binary_data is not None:
                return requested.binary_data
        return bool(self.parameters.get("binary_data_output", False))


# ---------------------------------------------------------------- decoding


def decode_request(
    body: bytes, header_length: int | str | None = None, *, max_elements: int | None = None
) -> InferenceRequest:
    """Decode a ``POST …/infer`` body; ``header_length`` is the ``Inference-Header-Content-Length`` value.

    ``max_elements`` caps the element count of each input tensor; it is checked from the
    declared shape before anything is allocated.
    """
    header, binary = _split_body(body, header_length)
    document = _parse_header(header)
    raw_inputs = document.get("inputs")
    if raw_inputs is None:
        raise CodecError("request has no 'inputs'")
    return InferenceRequest(
        inputs=_decode_inputs(raw_inputs, binary, max_elements),
        outputs=_decode_requested_outputs(document.get("outputs")),
        id=_request_id(document.get("id")),
        parameters=_request_parameters(document.get("parameters")),
    )


def decode_tensors(raw_inputs: Any, *, max_elements: int | None = None) -> list[Tensor]:
    """Decode JSON-only OIP tensors (``[{"name", "shape", "datatype", "data"}]``), as predictions carry them."""
    return _decode_inputs(raw_inputs, None, max_elements)


def check_tensor_header(
    name: str, datatype: Any, shape: Sequence[int], parameters: Mapping[str, Any], max_elements: int | None
) -> tuple[str, tuple[int, ...]]:
    """A tensor declared outside JSON (the gRPC transport): its datatype and shape, checked as JSON ones are."""
    label = f"input '{name}'" if name else "an input"
    spec = {"name": name, "datatype": datatype, "shape": list(shape), "parameters": dict(parameters)}
    _, datatype, dims, _ = _tensor_header(spec, label, max_elements)
    return datatype, dims


def tensor_from_raw(chunk: bytes | memoryview, datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray:
    """A tensor from its raw little-endian bytes (BYTES: length-prefixed elements), as the binary extension carries it;
    numeric arrays are read-only views of ``chunk``."""
    return _from_binary(memoryview(chunk), datatype, shape, label)


def requested_outputs(raw: Any) -> list[RequestedOutput]:
    """The request's ``outputs`` (``[{"name", "parameters"?}]``), checked: unique names, no classification."""
    return _decode_requested_outputs(raw)


def _split_body(body: bytes, header_length: int | str | None) -> tuple[memoryview, memoryview | None]:
    view = memoryview(body)
    if header_length is None:
        return view, None
    length = _parse_header_length(header_length)
    if length > len(view):
        raise CodecError(
            f"{HEADER_LENGTH_HEADER} is {length} but the body has only {len(view)} bytes; "
            "the header length must not be past the end of the body"
        )
    return view[:length], view[length:]


def _parse_header_length(value: int | str) -> int:
    problem = f"{HEADER_LENGTH_HEADER} must be a non-negative integer, got {value!r}"
    if isinstance(value, bool):
        raise CodecError(problem)
    try:
        length = int(value)
    except (TypeError, ValueError):
        raise CodecError(problem) from None
    if length < 0:
        raise CodecError(problem)
    return length


def _parse_header(header: memoryview) -> dict[str, Any]:
    try:
        document = json.loads(bytes(header))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CodecError(f"request JSON cannot be parsed: {exc}") from None
    if not isinstance(document, dict):
        raise CodecError("request JSON must be an object with 'inputs'")
    return document


def _request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise CodecError(f"request 'id' must be a string, got {_short(value)}")


def _request_parameters(value: Any) -> dict[str, Any]:
    parameters = _parameters(value, "request")
    if not isinstance(parameters.get("binary_data_output", False), bool):
        raise CodecError("request parameter 'binary_data_output' must be a boolean")
    return parameters


def _parameters(value: Any, label: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise CodecError(f"{label}: 'parameters' must be an object")
    return value


def _decode_inputs(raw_inputs: Any, binary: memoryview | None, max_elements: int | None) -> list[Tensor]:
    if not isinstance(raw_inputs, list):
        raise CodecError("'inputs' must be a list of tensors")
    tensors: list[Tensor] = []
    seen: set[str] = set()
    offset = 0
    for index, spec in enumerate(raw_inputs):
        label = _label("input", spec, index)
        name, datatype, shape, parameters = _tensor_header(spec, label, max_elements)
        if name in seen:
            raise CodecError(f"{label} appears more than once; input names must be unique")
        seen.add(name)
        binary_size = _binary_data_size(spec, parameters, label)
        if binary_size is None:
            data = _from_json(spec, datatype, shape, label)
        else:
            chunk, offset = _take_binary(binary, offset, binary_size, label)
            data = _from_binary(chunk, datatype, shape, label)
        tensors.append(Tensor(name, datatype, data, parameters))
    if binary is not None and offset != len(binary):
        raise CodecError(
            f"the binary part of the body is {len(binary)} bytes but the inputs' binary_data_size "
            f"add up to {offset} bytes"
        )
    return tensors


def _label(kind: str, spec: Any, index: int) -> str:
    name = spec.get("name") if isinstance(spec, dict) else None
    return f"{kind} '{name}'" if isinstance(name, str) and name else f"{kind} #{index}"


def _tensor_header(spec: Any, label: str, max_elements: int | None) -> tuple[str, str, tuple[int, ...], dict[str, Any]]:
    if not isinstance(spec, dict):
        raise CodecError(f"{label} must be an object with 'name', 'shape', 'datatype' and 'data'")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise CodecError(f"{label} has no 'name'")
    datatype = _datatype(spec.get("datatype"), label)
    shape = _shape(spec.get("shape"), label)
    _check_element_limit(shape, max_elements, label)
    parameters = _parameters(spec.get("parameters"), label)
    if "shared_memory_region" in parameters:
        raise CodecError(f"{label} uses shared memory, which this server does not offer; send the data in the body")
    return name, datatype, shape, parameters


def _datatype(value: Any, label: str) -> str:
    if value == "BF16":
        raise CodecError(
            f"{label} has datatype BF16, which this server cannot carry (numpy has no bfloat16); send FP32"
        )
    if not isinstance(value, str) or value not in OIP_TO_NUMPY:
        raise CodecError(f"{label} has unknown datatype {_short(value)}; supported: {', '.join(OIP_TO_NUMPY)}")
    return value


def _shape(value: Any, label: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise CodecError(f"{label} must have a 'shape' list of non-negative integers")
    for dim in value:
        if type(dim) is not int or dim < 0:
            raise CodecError(f"{label} has invalid shape {_short(value)}: dimensions must be non-negative integers")
    return tuple(value)


def _check_element_limit(shape: Sequence[int], max_elements: int | None, label: str) -> None:
    count = math.prod(shape)
    if max_elements is not None and count > max_elements:
        raise CodecError(f"{label} has shape {list(shape)}: {count} elements, over the limit of {max_elements}")


def _binary_data_size(spec: dict[str, Any], parameters: dict[str, Any], label: str) -> int | None:
    size = parameters.get("binary_data_size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise CodecError(f"{label} has binary_data_size {_short(size)}; it must be a non-negative integer")
    if "data" in spec:
        raise CodecError(f"{label} has both 'data' and binary_data_size; send its data one way")
    return size


def _take_binary(binary: memoryview | None, offset: int, size: int, label: str) -> tuple[memoryview, int]:
    if binary is None:
        raise CodecError(f"{label} has binary_data_size but the request has no {HEADER_LENGTH_HEADER} header")
    end = offset + size
    if end > len(binary):
        raise CodecError(
            f"{label} has binary_data_size {size} but only {len(binary) - offset} bytes of binary data are left"
        )
    return binary[offset:end], end


def serialize_bytes_tensor(array: np.ndarray) -> bytes:
    """BYTES elements as the binary extension carries them: each a 4-byte little-endian length, then its bytes."""
    return b"".join(_LENGTH_PREFIX.pack(len(item)) + item for item in map(_as_bytes, array.reshape(-1)))


def deserialize_bytes_tensor(chunk: memoryview, shape: Sequence[int], label: str) -> np.ndarray:
    """The inverse of :func:`serialize_bytes_tensor`: an object array of ``bytes`` with ``shape``."""
    return _bytes_elements(chunk, math.prod(shape), label).reshape(shape)


def _from_binary(chunk: memoryview, datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray:
    if datatype == "BYTES":
        return deserialize_bytes_tensor(chunk, shape, label)
    dtype = np.dtype(OIP_TO_NUMPY[datatype])
    expected = math.prod(shape) * dtype.itemsize
    if len(chunk) != expected:
        raise CodecError(
            f"{label} has binary_data_size {len(chunk)} but shape {list(shape)} of {datatype} needs {expected} bytes"
        )
    # The wire is little-endian; the astype only copies on a big-endian host.
    data = np.frombuffer(chunk, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False).reshape(shape)
    if datatype == "BOOL" and data.size and data.view(np.uint8).max() > 1:
        raise CodecError(f"{label} is BOOL but its binary data holds bytes other than 0 and 1")
    return data


def _bytes_elements(chunk: memoryview, count: int, label: str) -> np.ndarray:
    # Every element costs at least its length prefix: refuse before allocating ``count`` slots.
    if count * _LENGTH_PREFIX.size > len(chunk):
        raise CodecError(
            f"{label}: binary BYTES data is {len(chunk)} bytes, too short for {count} length-prefixed elements"
        )
    elements = np.empty(count, dtype=object)
    offset = 0
    for index in range(count):
        if offset + _LENGTH_PREFIX.size > len(chunk):
            raise CodecError(f"{label}: binary BYTES data ends after {index} of {count} elements")
        (length,) = _LENGTH_PREFIX.unpack_from(chunk, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(chunk):
            raise CodecError(f"{label}: BYTES element {index} claims {length} bytes, past the end of its data")
        elements[index] = bytes(chunk[offset : offset + length])
        offset += length
    if offset != len(chunk):
        raise CodecError(
            f"{label}: binary BYTES data has {len(chunk) - offset} bytes left over after its {count} elements"
        )
    return elements


def _from_json(spec: dict[str, Any], datatype: str, shape: tuple[int, ...], label: str) -> np.ndarray:
    if "data" not in spec:
        raise CodecError(f"{label} has no 'data' (and no binary_data_size)")
    flat = _flatten(spec["data"])
    count = math.prod(shape)
    if len(flat) != count:
        raise CodecError(f"{label} has {len(flat)} data elements but shape {list(shape)} needs {count}")
    _check_json_elements(flat, datatype, label)
    if datatype == "BYTES":
        elements = np.empty(count, dtype=object)
        elements[:] = [value.encode() for value in flat]
        return elements.reshape(shape)
    try:
        return np.array(flat, dtype=OIP_TO_NUMPY[datatype]).reshape(shape)
    except (OverflowError, ValueError) as exc:
        raise CodecError(f"{label}: data does not fit {datatype}: {exc}") from None


def _flatten(data: Any) -> list[Any]:
    """Row-major leaves of ``data``; a bare scalar is one element. Iterative, so depth costs no stack."""
    if not isinstance(data, list):
        return [data]
    if not any(isinstance(item, list) for item in data):
        return data
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _check_json_elements(flat: list[Any], datatype: str, label: str) -> None:
    allowed, description = _JSON_ELEMENT_TYPES[datatype]
    for index, value in enumerate(flat):
        if type(value) not in allowed:
            raise CodecError(f"{label} is {datatype} but data element {index} is {_short(value)}, not {description}")


def _decode_requested_outputs(raw: Any) -> list[RequestedOutput]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CodecError('\'outputs\' must be a list of {"name", "parameters"} objects')
    outputs: list[RequestedOutput] = []
    for index, spec in enumerate(raw):
        label = _label("output", spec, index)
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not spec["name"]:
            raise CodecError(f"{label} must be an object with a 'name'")
        if any(output.name == spec["name"] for output in outputs):
            raise CodecError(f"{label} is requested more than once")
        parameters = _parameters(spec.get("parameters"), label)
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise CodecError(f"{label}: parameter 'binary_data' must be a boolean")
        if parameters.get("classification"):
            raise CodecError(f"{label} asks for classification, which this server does not offer")
        if "shared_memory_region" in parameters:
            raise CodecError(f"{label} asks for shared memory, which this server does not offer")
        outputs.append(RequestedOutput(spec["name"], binary, parameters))
    return outputs


# ---------------------------------------------------------------- signature


def validate_against_signature(
    inputs: Sequence[Tensor] | Mapping[str, np.ndarray],
    signature: Mapping[str, Any],
    max_elements: int | None = None,
    *,
    outputs: Sequence[RequestedOutput] = (),
) -> None:
    """Check decoded inputs (and requested outputs) against ``{"inputs": [{"name", "datatype", "shape"}], …}``.

    ``-1`` in a signature shape is a free dimension; a ``None`` shape means the model does
    not state the rank, so only the datatype is checked.
    """
    expected = {spec["name"]: spec for spec in signature.get("inputs", [])}
    given = _named_tensors(inputs)
    for name, datatype, shape in given:
        spec = expected.get(name)
        if spec is None:
            raise CodecError(f"input '{name}' is not an input of this model; it takes {_names(expected)}")
        _check_against_spec(name, datatype, shape, spec, max_elements)
    missing = [name for name in expected if name not in {name for name, _, _ in given}]
    if missing:
        raise CodecError(f"missing input {_names(missing)}; the model takes {_names(expected)}")
    produced = [spec["name"] for spec in signature.get("outputs", [])]
    for requested in outputs:
        if requested.name not in produced:
            raise CodecError(f"output '{requested.name}' is not an output of this model; it has {_names(produced)}")


def _named_tensors(inputs: Sequence[Tensor] | Mapping[str, np.ndarray]) -> list[tuple[str, str, list[int]]]:
    if isinstance(inputs, Mapping):
        return [(name, datatype_of(array, f"input '{name}'"), list(array.shape)) for name, array in inputs.items()]
    return [(tensor.name, tensor.datatype, tensor.shape) for tensor in inputs]


def _check_against_spec(
    name: str, datatype: str, shape: list[int], spec: Mapping[str, Any], max_elements: int | None
) -> None:
    label = f"input '{name}'"
    if datatype != spec["datatype"]:
        raise CodecError(f"{label} has datatype {datatype} but the model expects {spec['datatype']}")
    _check_element_limit(shape, max_elements, label)
    expected = spec.get("shape")
    if expected is None:
        return
    if len(shape) != len(expected):
        raise CodecError(
            f"{label} has shape {shape} (rank {len(shape)}) but the model expects rank {len(expected)}: {expected}"
        )
    for axis, (got, want) in enumerate(zip(shape, expected, strict=True)):
        if want != -1 and got != want:
            raise CodecError(
                f"{label} has shape {shape} but the model expects {expected}: dimension {axis} must be {want}"
            )


def _names(names: Mapping[str, Any] | Sequence[str]) -> str:
    return ", ".join(f"'{name}'" for name in names) or "nothing"


# ---------------------------------------------------------------- encoding


def encode_response(
    outputs: Mapping[str, np.ndarray],
    *,
    model_name: str,
    model_version: str | int | None = None,
    request: InferenceRequest | None = None,
) -> tuple[bytes, int | None]:
    """The response body, and the ``Inference-Header-Content-Length`` to send (None: plain JSON).

    Only the outputs the request named are sent, in its order (all of them when it named
    none); each goes in the binary part when the request asked for it.
    """
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = str(model_version)
    if request is not None and request.id is not None:
        document["id"] = request.id
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name in _selected_outputs(outputs, request):
        if request is not None and request.wants_binary(name):
            entry, raw = _binary_entry(name, outputs[name])
            chunks.append(raw)
        else:
            entry = tensor_to_json(name, outputs[name])
        entries.append(entry)
    document["outputs"] = entries
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


def tensor_to_json(name: str, array: np.ndarray) -> dict[str, Any]:
    """One OIP tensor with flat JSON ``data`` (``/v1/predictions`` output uses this too)."""
    datatype = datatype_of(array, f"output '{name}'")
    return {"name": name, "datatype": datatype, "shape": list(array.shape), "data": _json_data(name, array, datatype)}


def datatype_of(array: np.ndarray, label: str = "tensor") -> str:
    """The OIP datatype of a numpy array: strings and objects are BYTES."""
    if array.dtype.kind in _BYTES_KINDS:
        return "BYTES"
    datatype = _OIP_OF_DTYPE.get(array.dtype) or _NUMPY_TO_OIP.get(array.dtype.name)  # by name: other byte orders
    if datatype is None:
        raise CodecError(f"{label} has numpy dtype {array.dtype}, which the inference protocol cannot carry")
    return datatype


def bytes_elements(array: np.ndarray) -> list[bytes]:
    """A BYTES tensor's elements, flattened row-major, each as bytes."""
    return [_as_bytes(item) for item in array.reshape(-1)]


def selected_outputs(outputs: Mapping[str, np.ndarray], request: InferenceRequest | None) -> list[str]:
    """The names of the outputs to send: the ones the request named, in its order, else all of them."""
    return _selected_outputs(outputs, request)


def _selected_outputs(outputs: Mapping[str, np.ndarray], request: InferenceRequest | None) -> list[str]:
    if request is None or not request.outputs:
        return list(outputs)
    for requested in request.outputs:
        if requested.name not in outputs:
            raise CodecError(f"output '{requested.name}' was requested but the model did not produce it")
    return [requested.name for requested in request.outputs]


def _binary_entry(name: str, array: np.ndarray) -> tuple[dict[str, Any], bytes]:
    datatype = datatype_of(array, f"output '{name}'")
    if datatype == "BYTES":
        raw = serialize_bytes_tensor(array)
    else:
        raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    entry = {
        "name": name,
        "datatype": datatype,
        "shape": list(array.shape),
        "parameters": {"binary_data_size": len(raw)},
    }
    return entry, raw


def _json_data(name: str, array: np.ndarray, datatype: str) -> list[Any]:
    flat = array.reshape(-1)
    if datatype != "BYTES":
        return flat.tolist()
    try:
        return [_as_bytes(item).decode() for item in flat]
    except UnicodeDecodeError:
        raise CodecError(
            f"output '{name}' holds BYTES that are not UTF-8 text; request it with binary_data: true"
        ) from None


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    # Like tritonclient's serialize_byte_tensor: anything else travels as its text.
    return str(item).encode()


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
