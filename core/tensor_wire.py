"""The internal wire format between the API and the model servers: named numpy arrays plus a little metadata.

Not a public protocol (clients speak Open Inference Protocol v2, see ``core.tensor_codec``): the
API decodes and checks a client's request once, then ships the arrays here as raw bytes, so the
model server does no JSON tensor parsing. Layout::

    uint32 little-endian header length | header JSON | tensor bytes, in header order

    header = {"meta": {...}, "tensors": [{"name", "dtype", "shape", "nbytes"}]}

``dtype`` is a numpy dtype string (``<f4``, ``|b1``…) for numeric and bool tensors, or ``"bytes"``
for object/string tensors, laid out as the OIP binary extension lays out BYTES (``core.tensor_codec``).
Unpacked numeric arrays are read-only views of the body. Pure: bytes and numpy only.

    body = pack({"x": x}, {"timeout_ms": 100})
    arrays, meta = unpack(body)
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from core.tensor_codec import CodecError, deserialize_bytes_tensor, serialize_bytes_tensor

CONTENT_TYPE = "application/x-maas-tensors"
BYTES = "bytes"
_HEADER_LENGTH = struct.Struct("<I")
_NUMERIC_KINDS = frozenset("biuf")


class WireError(ValueError):
    """The body is not a well-formed tensor message."""


def pack(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any] | None = None) -> bytes:
    """One message holding ``arrays`` (in order) and the JSON-able ``meta``."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in arrays.items():
        if array.dtype.kind in "OSU":
            raw, dtype = serialize_bytes_tensor(array), BYTES
        elif array.dtype.kind in _NUMERIC_KINDS:
            little = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            raw, dtype = np.ascontiguousarray(array, dtype=little).tobytes(), little.str
        else:
            raise WireError(f"tensor '{name}' has dtype {array.dtype}, which the wire format cannot carry")
        entries.append({"name": name, "dtype": dtype, "shape": list(array.shape), "nbytes": len(raw)})
        chunks.append(raw)
    header = json.dumps({"meta": dict(meta or {}), "tensors": entries}, separators=(",", ":")).encode()
    return b"".join([_HEADER_LENGTH.pack(len(header)), header, *chunks])


def unpack(body: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the metadata of a message made by :func:`pack`."""
    view = memoryview(body)
    if len(view) < _HEADER_LENGTH.size:
        raise WireError("the message is shorter than its header length")
    (length,) = _HEADER_LENGTH.unpack_from(view)
    start = _HEADER_LENGTH.size + length
    if start > len(view):
        raise WireError(f"the header claims {length} bytes but the message has {len(view) - _HEADER_LENGTH.size}")
    try:
        header = json.loads(bytes(view[_HEADER_LENGTH.size : start]))
        entries, meta = header["tensors"], header["meta"]
    except (ValueError, KeyError, TypeError) as exc:
        raise WireError(f"the header cannot be read: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    offset = start
    if not isinstance(entries, list) or not isinstance(meta, dict):
        raise WireError("the header's 'tensors' must be a list and its 'meta' an object")
    for entry in entries:
        name, dtype, shape, nbytes = _entry(entry)
        end = offset + nbytes
        if end > len(view):
            raise WireError(f"tensor '{name}' claims {nbytes} bytes, past the end of the message")
        chunk = view[offset:end]
        arrays[name] = (
            _unpack_bytes(chunk, shape, name) if dtype == BYTES else _unpack_numeric(chunk, dtype, shape, name)
        )
        offset = end
    if offset != len(view):
        raise WireError(f"{len(view) - offset} bytes are left over after the last tensor")
    return arrays, meta


def _entry(entry: Any) -> tuple[str, str, tuple[int, ...], int]:
    try:
        name, dtype, shape, nbytes = entry["name"], entry["dtype"], tuple(entry["shape"]), entry["nbytes"]
    except (KeyError, TypeError):
        raise WireError(f"a tensor entry needs name, dtype, shape and nbytes: {entry!r:.80}") from None
    if not all(type(value) is str for value in (name, dtype)) or type(nbytes) is not int or nbytes < 0:
        raise WireError(f"a tensor entry has a bad name, dtype or nbytes: {entry!r:.80}")
    if not all(type(dim) is int and dim >= 0 for dim in shape):
        raise WireError(f"tensor '{name}' has a bad shape {list(shape)}")
    return name, dtype, shape, nbytes


def _unpack_numeric(chunk: memoryview, dtype_str: str, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        dtype = np.dtype(dtype_str)
    except TypeError:
        raise WireError(f"tensor '{name}' has unknown dtype {dtype_str!r}") from None
    if dtype.kind not in _NUMERIC_KINDS:
        raise WireError(f"tensor '{name}' has dtype {dtype_str!r}, which the wire format does not carry")
    if len(chunk) != math.prod(shape) * dtype.itemsize:
        raise WireError(f"tensor '{name}' has {len(chunk)} bytes, not what shape {list(shape)} of {dtype} needs")
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _unpack_bytes(chunk: memoryview, shape: tuple[int, ...], name: str) -> np.ndarray:
    try:
        return deserialize_bytes_tensor(chunk, shape, f"tensor '{name}'")
    except CodecError as exc:
        raise WireError(str(exc)) from None
