"""Validation of uploaded files (``POST /v1/files``) before anything is stored.

Owns which formats each file purpose accepts, and the checks that a file of each
format (.npz, .csv, .parquet, .onnx, .safetensors) parses fully enough for a worker
to use it later. The API streams an upload to a temporary file, calls
:func:`detect_format` and :func:`validate_file`, and turns an :class:`InvalidFile`
into a 422 problem naming the request field at fault; the details returned on
success are stored with the file.

A dataset's details include ``uncompressed_bytes``: about what it takes in memory once read,
from what validation parses anyway (never by decompressing it to measure it), so that a small
compressed upload cannot claim terabytes. A dataset over the caller's limit is refused.
"""

from __future__ import annotations

import csv
import json
import math
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import onnx
import onnx.checker
import onnx.external_data_helper
import pyarrow as pa
import pyarrow.parquet as pq
from google.protobuf.message import DecodeError

from core.onnx_signature import UnsupportedSignature, read_signature

FORMATS_BY_PURPOSE: dict[str, tuple[str, ...]] = {
    "dataset": ("npz", "csv", "parquet"),
    "model": ("onnx", "safetensors"),
}

_CHUNK = 1 << 20
# The safetensors reference implementation refuses headers above this size too.
_MAX_SAFETENSORS_HEADER = 100_000_000
_NUMERIC_OR_STRING_KINDS = "biufcSU"
# what one csv or parquet value takes once read: a float64
TABLE_VALUE_BYTES = 8
# Version 3.0 differs from 2.0 only in allowing UTF-8 field names, which belong to structured
# dtypes; those are refused anyway, so reading its header as 2.0 is enough.
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,
}


class InvalidFile(ValueError):
    """An upload that cannot be accepted; ``pointer`` is the JSON pointer of the request field at fault."""

    def __init__(self, detail: str, pointer: str = "/file") -> None:
        super().__init__(detail)
        self.detail = detail
        self.pointer = pointer


def _message(exc: BaseException) -> str:
    """A library's error message on one line: some (the ONNX checker's) span several."""
    return " ".join(str(exc).split())


def detect_format(filename: str, purpose: str) -> str:
    """The format of ``filename`` (its extension, lower-cased) if ``purpose`` accepts it."""
    allowed = FORMATS_BY_PURPOSE.get(purpose)
    if allowed is None:
        valid = ", ".join(f"'{p}'" for p in FORMATS_BY_PURPOSE)
        raise InvalidFile(f"unknown purpose '{purpose}'; valid purposes: {valid}", "/purpose")
    suffix = Path(filename).suffix.lower().lstrip(".")
    if suffix in allowed:
        return suffix
    extensions = ", ".join(f".{f}" for f in allowed)
    other = next((p for p, formats in FORMATS_BY_PURPOSE.items() if suffix in formats), None)
    if other is not None:
        # The extension is fine, so the purpose is the likelier mistake.
        raise InvalidFile(
            f"a .{suffix} file is a {other}, not a {purpose}; purpose '{purpose}' accepts {extensions}",
            "/purpose",
        )
    found = f"extension .{suffix}" if suffix else "no extension"
    raise InvalidFile(f"filename '{filename}' has {found}; purpose '{purpose}' accepts {extensions}", "/filename")


def validate_file(path: Path, fmt: str, max_dataset_bytes: int | None = None) -> dict[str, Any]:
    """Check the file at ``path`` as format ``fmt``; return the JSON-serialisable details to store.

    A dataset (npz, csv, parquet) whose ``uncompressed_bytes`` are over ``max_dataset_bytes``
    is refused; an npz before any array is decompressed."""
    dataset_validator = _DATASET_VALIDATORS.get(fmt)
    validator = _VALIDATORS.get(fmt)
    if dataset_validator is None and validator is None:
        raise ValueError(f"no validator for format {fmt!r}")
    if path.stat().st_size == 0:
        raise InvalidFile("the file is empty")
    if dataset_validator is not None:
        return dataset_validator(path, _SizeLimit(max_dataset_bytes))
    assert validator is not None
    return validator(path)


def format_bytes(count: float) -> str:
    """A byte count in decimal units, one decimal: ``1.6 GB``."""
    if count < 1000:
        return f"{count:.0f} bytes"
    for unit in ("kB", "MB", "GB", "TB", "PB"):
        count /= 1000
        if count < 999.95 or unit == "PB":
            break
    return f"{count:.1f} {unit}"


class _SizeLimit:
    """The most bytes a dataset may take once read (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit

    def check(self, size: int, what: str, how: str = "uncompressed") -> int:
        """``size`` when within the limit; else an InvalidFile saying ``what`` takes ``size`` (``how``)."""
        if self.limit is None or size <= self.limit:
            return size
        found, limit = format_bytes(size), format_bytes(self.limit)
        if found == limit:  # just over: rounding would hide the difference
            found, limit = f"{size} bytes", f"{self.limit}-byte"
        raise InvalidFile(f"{what} take {found} {how}, over the {limit} limit (MAAS_MAX_DATASET_BYTES)")


# --- npz ---------------------------------------------------------------------------------------


def _validate_npz(path: Path, limit: _SizeLimit) -> dict[str, Any]:
    with path.open("rb") as f:
        head = f.read(len(np.lib.format.MAGIC_PREFIX))
    if head == np.lib.format.MAGIC_PREFIX:
        raise InvalidFile("not a .npz file: it is a single .npy array; save arrays with numpy.savez")
    # np.load only treats a file as a zip when it starts with a local or end-of-archive record.
    if not head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or not zipfile.is_zipfile(path):
        raise InvalidFile("not a .npz file: it is not a zip archive")
    try:
        with np.load(path, allow_pickle=False) as npz:
            # every header first, so that arrays over the limit are refused before any is inflated
            headers = [(info, *_check_npy_header(npz.zip, info)) for info in npz.zip.infolist()]
            if not headers:
                raise InvalidFile("the .npz file holds no arrays")
            total = limit.check(sum(dtype.itemsize * math.prod(shape) for _, _, dtype, shape in headers), "the arrays")
            for info, name, dtype, shape in headers:
                _check_npy_data(npz.zip, info, name, dtype, shape)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise InvalidFile(f"not a .npz file: the zip archive is corrupt ({_message(exc)})") from exc
    arrays = {name: {"dtype": str(dtype), "shape": list(shape)} for _, name, dtype, shape in headers}
    return {"arrays": arrays, "uncompressed_bytes": total}


@contextmanager
def _npy_member(archive: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> Iterator[IO[bytes]]:
    try:
        with archive.open(info) as member:
            yield member
    except InvalidFile:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        raise InvalidFile(f"array '{name}' is corrupt: {_message(exc)}") from exc


def _check_npy_header(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> tuple[str, np.dtype[Any], tuple[int, ...]]:
    """One member's name, dtype and shape, from its header alone (the data is not inflated)."""
    if info.is_dir() or not info.filename.endswith(".npy"):
        raise InvalidFile(
            f"not a .npz file: zip member '{info.filename}' is not a .npy array; "
            "a .npz holds only arrays written by numpy.savez"
        )
    name = info.filename.removesuffix(".npy")
    with _npy_member(archive, name, info) as member:
        dtype, shape = _read_npy_header(member, name)
    _check_dtype(name, dtype)
    return name, dtype, shape


def _check_npy_data(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> None:
    """Read one member through to its end, so that a bad CRC or a short payload is caught
    without holding the array in memory."""
    with _npy_member(archive, name, info) as member:
        _read_npy_header(member, name)
        actual = _drain(member)
    expected = dtype.itemsize * math.prod(shape)
    if actual != expected:
        raise InvalidFile(
            f"array '{name}' is corrupt: it holds {actual} bytes of data, expected {expected} "
            f"for {dtype} with shape {list(shape)}"
        )


def _read_npy_header(member: IO[bytes], name: str) -> tuple[np.dtype[Any], tuple[int, ...]]:
    try:
        version = np.lib.format.read_magic(member)
        if version not in _NPY_HEADER_READERS:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        shape, _fortran_order, dtype = _NPY_HEADER_READERS[version](member)
    except ValueError as exc:
        raise InvalidFile(f"array '{name}' is not a valid .npy array: {_message(exc)}") from exc
    return dtype, shape


def _check_dtype(name: str, dtype: np.dtype[Any]) -> None:
    if dtype.hasobject:
        raise InvalidFile(f"array '{name}' holds Python objects (pickled); only numeric and string arrays are accepted")
    if dtype.kind not in _NUMERIC_OR_STRING_KINDS:
        raise InvalidFile(f"array '{name}' has dtype {dtype}; only numeric and string arrays are accepted")


def _drain(stream: IO[bytes]) -> int:
    total = 0
    while chunk := stream.read(_CHUNK):
        total += len(chunk)
    return total


# --- csv ---------------------------------------------------------------------------------------


class _CsvReader(Protocol):
    line_num: int

    def __iter__(self) -> Iterator[list[str]]: ...

    def __next__(self) -> list[str]: ...


def _validate_csv(path: Path, limit: _SizeLimit) -> dict[str, Any]:
    with path.open("rb") as f:
        reader = csv.reader(_utf8_lines(f))
        try:
            header = next(reader, None)
            if not header:
                raise InvalidFile("the CSV has no header row: line 1 is empty")
            _check_header(header)
            rows = _count_rows(reader, len(header))
        except csv.Error as exc:
            raise InvalidFile(f"not a valid CSV: line {reader.line_num}: {_message(exc)}") from exc
    if rows == 0:
        raise InvalidFile("the CSV has a header but no data rows")
    size = limit.check(
        rows * len(header) * TABLE_VALUE_BYTES, f"the {rows} rows of {len(header)} columns", "as float64"
    )
    return {"columns": header, "rows": rows, "uncompressed_bytes": size}


def _utf8_lines(f: IO[bytes]) -> Iterator[str]:
    """Decode line by line, so a bad byte is reported with its line; a UTF-8 multi-byte
    sequence never contains a newline byte, so splitting before decoding is safe."""
    for number, raw in enumerate(f, start=1):
        line = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
        try:
            yield line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidFile(
                f"the CSV is not UTF-8 text: line {number} has an invalid byte "
                f"0x{line[exc.start]:02x} at byte {exc.start + 1} of the line"
            ) from exc


def _check_header(header: list[str]) -> None:
    seen: dict[str, int] = {}
    for column, name in enumerate(header, start=1):
        if not name.strip():
            raise InvalidFile(f"column {column} of the header row has no name; every column needs one")
        if name in seen:
            raise InvalidFile(
                f"column name '{name}' appears twice in the header row (columns {seen[name]} and {column})"
            )
        seen[name] = column


def _count_rows(reader: _CsvReader, width: int) -> int:
    rows = 0
    last_line = reader.line_num
    for row in reader:
        first_line, last_line = last_line + 1, reader.line_num
        if not row:
            continue  # a blank line, as csv readers generally skip
        if len(row) != width:
            raise InvalidFile(
                f"line {first_line} has {len(row)} field{'s' * (len(row) != 1)}, expected {width} "
                f"(the header has {width})"
            )
        rows += 1
    return rows


# --- parquet -----------------------------------------------------------------------------------


def _validate_parquet(path: Path, limit: _SizeLimit) -> dict[str, Any]:
    try:
        with pq.ParquetFile(path) as parquet:
            schema = parquet.schema_arrow
            metadata = parquet.metadata
            rows = metadata.num_rows
            stored = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    except (pa.ArrowException, OSError) as exc:
        raise InvalidFile(f"not a valid Parquet file: {_message(exc)}") from exc
    if len(schema) == 0:
        raise InvalidFile("the Parquet file has no columns")
    if rows == 0:
        raise InvalidFile("the Parquet file has no rows")
    # The metadata's uncompressed size is still dictionary- and run-length-encoded: a column of
    # repeats takes almost nothing there, and 8 bytes a value once read.
    size = limit.check(max(stored, rows * len(schema) * TABLE_VALUE_BYTES), "the columns")
    return {
        "columns": [{"name": f.name, "type": str(f.type)} for f in schema],
        "rows": rows,
        "uncompressed_bytes": size,
    }


# --- onnx --------------------------------------------------------------------------------------


def _validate_onnx(path: Path) -> dict[str, Any]:
    try:
        model = onnx.load(path, load_external_data=False)
    except (DecodeError, RuntimeError) as exc:
        raise InvalidFile(f"not a valid ONNX model: {_message(exc)}") from exc
    _refuse_external_data(model)
    try:
        # Checking by path works for models too big to serialise again in memory.
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, RuntimeError) as exc:
        raise InvalidFile(f"not a valid ONNX model: {_message(exc)}") from exc
    try:
        signature = read_signature(model)
    except UnsupportedSignature as exc:
        raise InvalidFile(f"the ONNX model cannot be served: {_message(exc)}") from exc
    if not signature["outputs"]:
        raise InvalidFile("the ONNX model has no outputs")
    return {"signature": signature, "opset": _default_opset(model), "ir_version": model.ir_version}


def _refuse_external_data(model: onnx.ModelProto) -> None:
    """Only the one uploaded file is stored, so weights kept in side files would be lost,
    and their paths must not be resolved on this machine."""
    for tensor in _all_tensors(model.graph):
        if onnx.external_data_helper.uses_external_data(tensor):
            raise InvalidFile(
                f"the ONNX model keeps tensor '{tensor.name}' in an external data file; "
                "upload a model saved as a single file"
            )


def _all_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _all_tensors(subgraph)


def _default_opset(model: onnx.ModelProto) -> int:
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx"):
            return opset.version
    raise InvalidFile("the ONNX model imports no default-domain (ai.onnx) opset")


# --- safetensors -------------------------------------------------------------------------------

# Bits per element, as the safetensors format defines its dtypes.
_SAFETENSORS_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip


def _validate_safetensors(path: Path) -> dict[str, Any]:
    size = path.stat().st_size
    with path.open("rb") as f:
        header_len = _safetensors_header_length(f.read(8), size)
        header = _parse_safetensors_header(f.read(header_len))
    data_len = size - 8 - header_len
    _check_metadata(header.pop("__metadata__", {}))
    if not header:
        raise InvalidFile("the .safetensors file holds no tensors")
    tensors = {name: _check_tensor(name, info, data_len) for name, info in header.items()}
    _check_layout(header, data_len)
    return {
        "tensors": {name: {"dtype": t["dtype"], "shape": t["shape"]} for name, t in tensors.items()},
        "parameters": sum(math.prod(t["shape"]) for t in tensors.values()),
    }


def _safetensors_header_length(prefix: bytes, size: int) -> int:
    if len(prefix) < 8:
        raise InvalidFile(f"not a .safetensors file: it is {size} bytes, too short for the 8-byte header length")
    (header_len,) = struct.unpack("<Q", prefix)
    if header_len > _MAX_SAFETENSORS_HEADER:
        raise InvalidFile(
            f"not a .safetensors file: the header length {header_len} bytes is over the "
            f"{_MAX_SAFETENSORS_HEADER} byte limit"
        )
    if 8 + header_len > size:
        raise InvalidFile(
            f"not a .safetensors file: the header length {header_len} bytes runs past the end of the {size}-byte file"
        )
    return header_len


def _parse_safetensors_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidFile(f"not a .safetensors file: the header is not UTF-8 JSON ({_message(exc)})") from exc
    if not isinstance(header, dict):
        raise InvalidFile("not a .safetensors file: the header is not a JSON object")
    return header


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise InvalidFile(f"the .safetensors header names '{key}' twice")
        result[key] = value
    return result


def _check_metadata(metadata: Any) -> None:
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InvalidFile("the .safetensors header's __metadata__ must map strings to strings")


def _check_tensor(name: str, info: Any, data_len: int) -> dict[str, Any]:
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise InvalidFile(f"tensor '{name}' needs dtype, shape and data_offsets in the header")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    bits = _SAFETENSORS_BITS.get(dtype) if isinstance(dtype, str) else None
    if bits is None:
        raise InvalidFile(f"tensor '{name}' has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise InvalidFile(f"tensor '{name}' has shape {shape!r}; expected a list of non-negative integers")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise InvalidFile(f"tensor '{name}' has data_offsets {offsets!r}; expected [begin, end]")
    begin, end = offsets
    if begin > end or end > data_len:
        raise InvalidFile(
            f"tensor '{name}' has data_offsets [{begin}, {end}], outside the {data_len}-byte data section"
        )
    total_bits = math.prod(shape) * bits
    if total_bits % 8 or total_bits // 8 != end - begin:
        raise InvalidFile(
            f"tensor '{name}' spans {end - begin} bytes, but {dtype} with shape {shape} needs {total_bits / 8:g} bytes"
        )
    return {"dtype": dtype, "shape": shape}


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(header: dict[str, Any], data_len: int) -> None:
    """Tensors must tile the data section exactly, in offset order, as the reference loader demands."""
    position, previous = 0, None
    for name, info in sorted(header.items(), key=lambda item: tuple(item[1]["data_offsets"])):
        begin, end = info["data_offsets"]
        if begin < position:
            raise InvalidFile(
                f"tensor '{name}' at data_offsets [{begin}, {end}] overlaps tensor '{previous}', "
                f"which ends at {position}"
            )
        if begin > position:
            raise InvalidFile(f"tensor '{name}' starts at data offset {begin}, leaving a gap after offset {position}")
        position, previous = end, name
    if position != data_len:
        raise InvalidFile(f"the .safetensors data section is {data_len} bytes but its tensors cover only {position}")


_DATASET_VALIDATORS: dict[str, Callable[[Path, _SizeLimit], dict[str, Any]]] = {
    "npz": _validate_npz,
    "csv": _validate_csv,
    "parquet": _validate_parquet,
}
_VALIDATORS: dict[str, Callable[[Path], dict[str, Any]]] = {
    "onnx": _validate_onnx,
    "safetensors": _validate_safetensors,
}
