"""detect_format and validate_file on real files of every accepted format, good and broken."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from onnx import TensorProto, helper, numpy_helper

from core import file_validation
from core.file_validation import FORMATS_BY_PURPOSE, InvalidFile, detect_format, format_bytes, validate_file


def _invalid(path: Path, fmt: str) -> InvalidFile:
    with pytest.raises(InvalidFile) as caught:
        validate_file(path, fmt)
    return caught.value


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# --- detect_format -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filename", "purpose", "fmt"),
    [
        ("train.npz", "dataset", "npz"),
        ("train.CSV", "dataset", "csv"),
        ("dir.v2/train.Parquet", "dataset", "parquet"),
        ("net.onnx", "model", "onnx"),
        ("weights.SAFETENSORS", "model", "safetensors"),
    ],
)
def test_detect_format_by_extension_case_insensitive(filename: str, purpose: str, fmt: str) -> None:
    assert detect_format(filename, purpose) == fmt


def test_formats_by_purpose() -> None:
    assert FORMATS_BY_PURPOSE == {"dataset": ("npz", "csv", "parquet"), "model": ("onnx", "safetensors")}


def test_detect_format_unknown_purpose() -> None:
    with pytest.raises(InvalidFile) as caught:
        detect_format("train.csv", "training")
    assert caught.value.pointer == "/purpose"
    assert caught.value.detail == "unknown purpose 'training'; valid purposes: 'dataset', 'model'"


def test_detect_format_unknown_extension() -> None:
    with pytest.raises(InvalidFile) as caught:
        detect_format("train.txt", "dataset")
    assert caught.value.pointer == "/filename"
    assert caught.value.detail == (
        "filename 'train.txt' has extension .txt; purpose 'dataset' accepts .npz, .csv, .parquet"
    )


def test_detect_format_no_extension() -> None:
    with pytest.raises(InvalidFile) as caught:
        detect_format("weights", "model")
    assert caught.value.pointer == "/filename"
    assert caught.value.detail == "filename 'weights' has no extension; purpose 'model' accepts .onnx, .safetensors"


def test_detect_format_extension_of_the_other_purpose_blames_the_purpose() -> None:
    with pytest.raises(InvalidFile) as caught:
        detect_format("net.onnx", "dataset")
    assert caught.value.pointer == "/purpose"
    assert caught.value.detail == (
        "a .onnx file is a model, not a dataset; purpose 'dataset' accepts .npz, .csv, .parquet"
    )


def test_invalid_file_is_a_value_error_with_detail_and_pointer() -> None:
    error = InvalidFile("the file is empty")
    assert isinstance(error, ValueError)
    assert (error.detail, error.pointer, str(error)) == ("the file is empty", "/file", "the file is empty")


def test_unknown_format_is_a_programming_error_not_an_invalid_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "x.txt", b"x")
    with pytest.raises(ValueError, match="no validator") as caught:
        validate_file(path, "txt")
    assert not isinstance(caught.value, InvalidFile)


@pytest.mark.parametrize("fmt", ["npz", "csv", "parquet", "onnx", "safetensors"])
def test_empty_file(tmp_path: Path, fmt: str) -> None:
    error = _invalid(_write(tmp_path / f"empty.{fmt}", b""), fmt)
    assert (error.pointer, error.detail) == ("/file", "the file is empty")


# --- npz ---------------------------------------------------------------------------------------


def test_npz_details(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(
        path,
        X=np.zeros((5, 3), np.float32),
        y=np.arange(5, dtype=np.int64),
        names=np.array(["ab", "c"]),
        mask=np.ones(2, bool),
        empty=np.zeros((0, 7), np.float64),
    )
    assert validate_file(path, "npz") == {
        "arrays": {
            "X": {"dtype": "float32", "shape": [5, 3]},
            "y": {"dtype": "int64", "shape": [5]},
            "names": {"dtype": "<U2", "shape": [2]},
            "mask": {"dtype": "bool", "shape": [2]},
            "empty": {"dtype": "float64", "shape": [0, 7]},
        },
        "uncompressed_bytes": 5 * 3 * 4 + 5 * 8 + 2 * 2 * 4 + 2,
    }


def test_compressed_npz_details(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez_compressed(path, X=np.arange(1000, dtype=np.int32).reshape(10, 100))
    assert validate_file(path, "npz") == {
        "arrays": {"X": {"dtype": "int32", "shape": [10, 100]}},
        "uncompressed_bytes": 4000,
    }


def test_npz_not_a_zip(tmp_path: Path) -> None:
    error = _invalid(_write(tmp_path / "d.npz", b"a,b\n1,2\n"), "npz")
    assert (error.pointer, error.detail) == ("/file", "not a .npz file: it is not a zip archive")


def test_npz_truncated_zip(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.zeros(1000))
    path.write_bytes(path.read_bytes()[:3000])
    error = _invalid(path, "npz")
    assert (error.pointer, error.detail) == ("/file", "not a .npz file: it is not a zip archive")


def test_npz_that_is_a_single_npy(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(3))
    error = _invalid(_write(tmp_path / "d.npz", buffer.getvalue()), "npz")
    assert error.pointer == "/file"
    assert "it is a single .npy array" in error.detail


def test_zip_that_is_not_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "hello")
    error = _invalid(path, "npz")
    assert error.pointer == "/file"
    assert error.detail.startswith("not a .npz file: zip member 'readme.txt' is not a .npy array")


def test_npz_member_with_a_bad_npy_header(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", b"this is not an npy header at all")
    error = _invalid(path, "npz")
    assert error.pointer == "/file"
    assert error.detail.startswith("array 'X' is not a valid .npy array:")


def test_npz_object_array(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, ok=np.zeros(2), X=np.array([{"a": 1}, None], dtype=object))
    error = _invalid(path, "npz")
    assert (error.pointer, error.detail) == (
        "/file",
        "array 'X' holds Python objects (pickled); only numeric and string arrays are accepted",
    )


def test_npz_structured_array(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, rec=np.zeros(2, dtype=[("a", "<i4"), ("b", "<f8")]))
    error = _invalid(path, "npz")
    assert error.pointer == "/file"
    assert error.detail.startswith("array 'rec' has dtype")
    assert error.detail.endswith("only numeric and string arrays are accepted")


def test_empty_npz(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path)
    error = _invalid(path, "npz")
    assert (error.pointer, error.detail) == ("/file", "the .npz file holds no arrays")


def test_npz_member_with_corrupt_data_fails_its_crc(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    payload = np.arange(100, dtype=np.int64)
    np.savez(path, X=payload)
    data = bytearray(path.read_bytes())
    at = bytes(data).index(payload.tobytes()) + 50
    data[at] ^= 0xFF
    error = _invalid(_write(path, bytes(data)), "npz")
    assert error.pointer == "/file"
    assert error.detail.startswith("array 'X' is corrupt:")
    assert "CRC" in error.detail


def test_npz_member_shorter_than_its_header_says(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(10, np.float64))
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("X.npy", buffer.getvalue()[:-40])
    error = _invalid(path, "npz")
    assert (error.pointer, error.detail) == (
        "/file",
        "array 'X' is corrupt: it holds 40 bytes of data, expected 80 for float64 with shape [10]",
    )


# --- csv ---------------------------------------------------------------------------------------


def test_csv_details(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", b"x1,x2,label\n0.5,1,cat\n2,3.25,dog\n")
    assert validate_file(path, "csv") == {"columns": ["x1", "x2", "label"], "rows": 2, "uncompressed_bytes": 48}


def test_csv_with_bom_crlf_quoted_newlines_and_blank_lines(tmp_path: Path) -> None:
    text = '\ufeffid,text\r\n1,"multi\r\nline, with comma"\r\n\r\n2,"caf\u00e9"\r\n'
    path = _write(tmp_path / "d.csv", text.encode("utf-8"))
    assert validate_file(path, "csv") == {"columns": ["id", "text"], "rows": 2, "uncompressed_bytes": 32}


def test_csv_ragged_row_reports_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", b"a,b,c,d\n1,2,3,4\n1,2,3,4,5\n1,2,3\n")
    error = _invalid(path, "csv")
    assert (error.pointer, error.detail) == ("/file", "line 3 has 5 fields, expected 4 (the header has 4)")


def test_csv_ragged_row_line_counts_multiline_records(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", b'a,b\n1,"two\nlines"\n\n3\n')
    error = _invalid(path, "csv")
    assert error.detail == "line 5 has 1 field, expected 2 (the header has 2)"


def test_csv_without_data_rows(tmp_path: Path) -> None:
    error = _invalid(_write(tmp_path / "d.csv", b"a,b,c\n"), "csv")
    assert (error.pointer, error.detail) == ("/file", "the CSV has a header but no data rows")


def test_csv_with_an_empty_first_line(tmp_path: Path) -> None:
    error = _invalid(_write(tmp_path / "d.csv", b"\na,b\n1,2\n"), "csv")
    assert (error.pointer, error.detail) == ("/file", "the CSV has no header row: line 1 is empty")


def test_csv_duplicate_column_names(tmp_path: Path) -> None:
    error = _invalid(_write(tmp_path / "d.csv", b"a,b,a\n1,2,3\n"), "csv")
    assert (error.pointer, error.detail) == (
        "/file",
        "column name 'a' appears twice in the header row (columns 1 and 3)",
    )


def test_csv_blank_column_name(tmp_path: Path) -> None:
    error = _invalid(_write(tmp_path / "d.csv", b"a, ,c\n1,2,3\n"), "csv")
    assert (error.pointer, error.detail) == (
        "/file",
        "column 2 of the header row has no name; every column needs one",
    )


def test_csv_not_utf8(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", "name,city\nJos\u00e9,M\u00fcnchen\n".encode("latin-1"))
    error = _invalid(path, "csv")
    assert (error.pointer, error.detail) == (
        "/file",
        "the CSV is not UTF-8 text: line 2 has an invalid byte 0xe9 at byte 4 of the line",
    )


def test_csv_field_over_the_size_limit(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", b"a,b\n1," + b"x" * 200_000 + b"\n")
    error = _invalid(path, "csv")
    assert error.pointer == "/file"
    assert error.detail.startswith("not a valid CSV: line 2: field larger than field limit")


# --- parquet -----------------------------------------------------------------------------------


def _parquet(path: Path, rows: int = 3) -> Path:
    table = pa.table(
        {
            "x": pa.array(range(rows), pa.int64()),
            "score": pa.array([0.5] * rows, pa.float32()),
            "label": pa.array(["a"] * rows, pa.string()),
        }
    )
    pq.write_table(table, path)
    return path


def _metadata_bytes(path: Path) -> int:
    """The row groups' uncompressed size, as the Parquet footer states it."""
    metadata = pq.ParquetFile(path).metadata
    return sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))


def test_parquet_details(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "d.parquet")
    assert validate_file(path, "parquet") == {
        "columns": [
            {"name": "x", "type": "int64"},
            {"name": "score", "type": "float"},
            {"name": "label", "type": "string"},
        ],
        "rows": 3,
        "uncompressed_bytes": max(3 * 3 * 8, _metadata_bytes(path)),
    }


def test_parquet_garbage(tmp_path: Path) -> None:
    error = _invalid(_write(tmp_path / "d.parquet", b"definitely not parquet" * 10), "parquet")
    assert error.pointer == "/file"
    assert error.detail.startswith("not a valid Parquet file:")


def test_parquet_truncated(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "d.parquet", rows=1000)
    path.write_bytes(path.read_bytes()[:-100])
    error = _invalid(path, "parquet")
    assert error.pointer == "/file"
    assert error.detail.startswith("not a valid Parquet file:")


def test_parquet_without_rows(tmp_path: Path) -> None:
    error = _invalid(_parquet(tmp_path / "d.parquet", rows=0), "parquet")
    assert (error.pointer, error.detail) == ("/file", "the Parquet file has no rows")


# --- the dataset size limit (MAAS_MAX_DATASET_BYTES) -------------------------------------------


@pytest.mark.parametrize(
    ("count", "text"),
    [(0, "0 bytes"), (999, "999 bytes"), (1000, "1.0 kB"), (16_000_000, "16.0 MB"), (999_960, "1.0 MB"),
     (1_600_000_000, "1.6 GB"), (4 << 30, "4.3 GB"), (3 * 10**18, "3000.0 PB")],
)  # fmt: skip
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text


def _npz_bomb(path: Path) -> Path:
    """2000 by 2000 float32 zeros, deflated: a few kB that inflate to 16 MB."""
    np.savez_compressed(path, X=np.zeros((2000, 2000), np.float32), y=np.zeros(2000, np.int64))
    assert path.stat().st_size < 100_000
    return path


def test_npz_bomb_over_the_limit_is_refused_without_inflating_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _npz_bomb(tmp_path / "bomb.npz")

    def no_drain(stream: Any) -> int:
        raise AssertionError("an array was inflated")

    monkeypatch.setattr(file_validation, "_drain", no_drain)
    with pytest.raises(InvalidFile) as caught:
        validate_file(path, "npz", max_dataset_bytes=1_000_000)
    assert (caught.value.pointer, caught.value.detail) == (
        "/file",
        "the arrays take 16.0 MB uncompressed, over the 1.0 MB limit (MAAS_MAX_DATASET_BYTES)",
    )


def test_npz_at_the_limit_is_accepted_with_its_uncompressed_size(tmp_path: Path) -> None:
    size = 2000 * 2000 * 4 + 2000 * 8
    details = validate_file(_npz_bomb(tmp_path / "d.npz"), "npz", max_dataset_bytes=size)
    assert details["uncompressed_bytes"] == size


def test_npz_just_over_the_limit_names_exact_bytes(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, X=np.zeros((100, 10)), y=np.zeros(100, np.int64))  # 8000 + 800 bytes
    with pytest.raises(InvalidFile) as caught:
        validate_file(path, "npz", max_dataset_bytes=8799)
    assert caught.value.detail == (
        "the arrays take 8800 bytes uncompressed, over the 8799-byte limit (MAAS_MAX_DATASET_BYTES)"
    )
    assert validate_file(path, "npz", max_dataset_bytes=8800)["uncompressed_bytes"] == 8800


def test_csv_over_the_limit_counts_float64_values(tmp_path: Path) -> None:
    path = _write(tmp_path / "d.csv", b"a,b,label\n" + b"0,0,0\n" * 200)  # 200 rows, 3 columns, 8 bytes: 4800
    with pytest.raises(InvalidFile) as caught:
        validate_file(path, "csv", max_dataset_bytes=1000)
    assert (caught.value.pointer, caught.value.detail) == (
        "/file",
        "the 200 rows of 3 columns take 4.8 kB as float64, over the 1.0 kB limit (MAAS_MAX_DATASET_BYTES)",
    )
    assert validate_file(path, "csv", max_dataset_bytes=4800)["uncompressed_bytes"] == 4800


def test_parquet_of_repeats_counts_what_it_takes_once_read(tmp_path: Path) -> None:
    # dictionary and run-length encoding: 1.6 MB of int64 zeros that the footer calls a few kB
    path = tmp_path / "d.parquet"
    pq.write_table(pa.table({"x": np.zeros(100_000, np.int64), "label": np.zeros(100_000, np.int64)}), path)
    assert _metadata_bytes(path) < 100_000
    with pytest.raises(InvalidFile) as caught:
        validate_file(path, "parquet", max_dataset_bytes=1_000_000)
    assert (caught.value.pointer, caught.value.detail) == (
        "/file",
        "the columns take 1.6 MB uncompressed, over the 1.0 MB limit (MAAS_MAX_DATASET_BYTES)",
    )
    assert validate_file(path, "parquet", max_dataset_bytes=2_000_000)["uncompressed_bytes"] == 1_600_000


def test_parquet_of_long_strings_counts_the_metadata_size(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    texts = [f"{i:05d}" + "abcdefghij" * 1000 for i in range(20)]
    pq.write_table(pa.table({"text": texts, "label": list(range(20))}), path)
    stored = _metadata_bytes(path)
    assert stored > 200_000 > 20 * 2 * 8
    assert validate_file(path, "parquet", max_dataset_bytes=stored)["uncompressed_bytes"] == stored
    with pytest.raises(InvalidFile, match=r"the columns take .* uncompressed, over the 100.0 kB limit"):
        validate_file(path, "parquet", max_dataset_bytes=100_000)


def test_models_are_not_held_to_the_dataset_limit(tmp_path: Path) -> None:
    path = _save(_onnx_model(), tmp_path / "m.onnx")
    assert "uncompressed_bytes" not in validate_file(path, "onnx", max_dataset_bytes=1)


# --- onnx --------------------------------------------------------------------------------------


def _onnx_model(nodes: list[onnx.NodeProto] | None = None) -> onnx.ModelProto:
    """Y = X @ W + B with a symbolic batch dimension, unless other nodes are given."""
    graph = helper.make_graph(
        nodes or [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])],
        "linear",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", 3])],
        initializer=[
            numpy_helper.from_array(np.ones((4, 3), np.float32), "W"),
            numpy_helper.from_array(np.zeros(3, np.float32), "B"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_onnx_details(tmp_path: Path) -> None:
    assert validate_file(_save(_onnx_model(), tmp_path / "m.onnx"), "onnx") == {
        "signature": {
            "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 4]}],
            "outputs": [{"name": "Y", "datatype": "FP32", "shape": [-1, 3]}],
        },
        "opset": 17,
        "ir_version": 8,
    }


def test_onnx_details_are_json_serialisable(tmp_path: Path) -> None:
    details = validate_file(_save(_onnx_model(), tmp_path / "m.onnx"), "onnx")
    assert json.loads(json.dumps(details)) == details


@pytest.mark.parametrize("garbage", [b"\xff" * 64, b"hello, this is not a model", bytes(range(256)) * 4])
def test_onnx_garbage(tmp_path: Path, garbage: bytes) -> None:
    error = _invalid(_write(tmp_path / "m.onnx", garbage), "onnx")
    assert error.pointer == "/file"
    assert error.detail.startswith("not a valid ONNX model:")


def test_onnx_unknown_op_fails_the_checker(tmp_path: Path) -> None:
    model = _onnx_model([helper.make_node("NoSuchOp", ["X", "W"], ["Y"])])
    error = _invalid(_save(model, tmp_path / "m.onnx"), "onnx")
    assert error.pointer == "/file"
    assert error.detail.startswith("not a valid ONNX model:")
    assert "NoSuchOp" in error.detail


def test_onnx_dangling_input_fails_the_checker(tmp_path: Path) -> None:
    model = _onnx_model(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "nowhere"], ["Y"])]
    )
    error = _invalid(_save(model, tmp_path / "m.onnx"), "onnx")
    assert error.pointer == "/file"
    assert error.detail.startswith("not a valid ONNX model:")
    assert "input 'nowhere'" in error.detail
    assert "\n" not in error.detail


def test_onnx_with_external_data_is_refused(tmp_path: Path) -> None:
    model = _onnx_model()
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="weights.bin")
    error = _invalid(_save(model, tmp_path / "m.onnx"), "onnx")
    assert (error.pointer, error.detail) == (
        "/file",
        "the ONNX model keeps tensor 'W' in an external data file; upload a model saved as a single file",
    )


def test_onnx_with_an_output_the_protocol_cannot_carry(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "complex",
        [helper.make_tensor_value_info("x", TensorProto.COMPLEX64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.COMPLEX64, [2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    error = _invalid(_save(model, tmp_path / "m.onnx"), "onnx")
    assert error.pointer == "/file"
    assert error.detail.startswith("the ONNX model cannot be served: input 'x' has element type COMPLEX64")


def test_onnx_without_outputs(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "sink",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    error = _invalid(_save(model, tmp_path / "m.onnx"), "onnx")
    assert (error.pointer, error.detail) == ("/file", "the ONNX model has no outputs")


def test_onnx_without_a_default_domain_opset(tmp_path: Path) -> None:
    passthrough = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([], "passthrough", [passthrough], [passthrough])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("custom.domain", 1)], ir_version=8)
    error = _invalid(_save(model, tmp_path / "m.onnx"), "onnx")
    assert (error.pointer, error.detail) == (
        "/file",
        "the ONNX model imports no default-domain (ai.onnx) opset",
    )


# --- safetensors -------------------------------------------------------------------------------


def _safetensors(path: Path, header: dict[str, Any], data: bytes) -> Path:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)  # the reference writer pads the header to 8 bytes
    return _write(path, struct.pack("<Q", len(raw)) + raw + data)


_F32_2x3 = {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}
_I64_3 = {"dtype": "I64", "shape": [3], "data_offsets": [24, 48]}


def test_safetensors_details(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": "pt"}, "bias": _I64_3, "weight": _F32_2x3}
    path = _safetensors(tmp_path / "m.safetensors", header, bytes(48))
    assert validate_file(path, "safetensors") == {
        "tensors": {"bias": {"dtype": "I64", "shape": [3]}, "weight": {"dtype": "F32", "shape": [2, 3]}},
        "parameters": 9,
    }


def test_safetensors_sub_byte_dtype_and_scalar(tmp_path: Path) -> None:
    header = {
        "packed": {"dtype": "F4", "shape": [2, 4], "data_offsets": [0, 4]},
        "scale": {"dtype": "BF16", "shape": [], "data_offsets": [4, 6]},
    }
    path = _safetensors(tmp_path / "m.safetensors", header, bytes(6))
    assert validate_file(path, "safetensors")["parameters"] == 9


def test_safetensors_written_by_the_safetensors_package(tmp_path: Path) -> None:
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "m.safetensors"
    safetensors_numpy.save_file(
        {
            "embed": np.zeros((10, 4), np.float16),
            "codes": np.arange(6, dtype=np.int8).reshape(2, 3),
            "mask": np.ones(5, bool),
            "step": np.array(7, np.int64),
        },
        str(path),
        metadata={"format": "np"},
    )
    assert validate_file(path, "safetensors") == {
        "tensors": {
            "codes": {"dtype": "I8", "shape": [2, 3]},
            "embed": {"dtype": "F16", "shape": [10, 4]},
            "mask": {"dtype": "BOOL", "shape": [5]},
            "step": {"dtype": "I64", "shape": []},
        },
        "parameters": 52,
    }


def test_safetensors_too_short_for_the_header_length(tmp_path: Path) -> None:
    error = _invalid(_write(tmp_path / "m.safetensors", b"\x01\x02\x03"), "safetensors")
    assert error.pointer == "/file"
    assert "too short for the 8-byte header length" in error.detail


def test_safetensors_header_length_past_eof(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.safetensors", struct.pack("<Q", 1000) + b'{"a": 1}')
    error = _invalid(path, "safetensors")
    assert (error.pointer, error.detail) == (
        "/file",
        "not a .safetensors file: the header length 1000 bytes runs past the end of the 16-byte file",
    )


def test_safetensors_absurd_header_length(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.safetensors", struct.pack("<Q", 1 << 40) + bytes(64))
    error = _invalid(path, "safetensors")
    assert error.pointer == "/file"
    assert "header length 1099511627776 bytes is over the 100000000 byte limit" in error.detail


def test_safetensors_header_not_json(tmp_path: Path) -> None:
    path = _write(tmp_path / "m.safetensors", struct.pack("<Q", 8) + b"{not js}")
    error = _invalid(path, "safetensors")
    assert error.pointer == "/file"
    assert error.detail.startswith("not a .safetensors file: the header is not UTF-8 JSON")


def test_safetensors_header_not_an_object(tmp_path: Path) -> None:
    error = _invalid(_safetensors(tmp_path / "m.safetensors", [1, 2], b""), "safetensors")  # type: ignore[arg-type]
    assert error.detail == "not a .safetensors file: the header is not a JSON object"


def test_safetensors_duplicate_tensor_names(tmp_path: Path) -> None:
    raw = b'{"w": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}, "w": {}}'
    path = _write(tmp_path / "m.safetensors", struct.pack("<Q", len(raw)) + raw + b"\x00")
    error = _invalid(path, "safetensors")
    assert (error.pointer, error.detail) == ("/file", "the .safetensors header names 'w' twice")


def test_safetensors_overlapping_offsets(tmp_path: Path) -> None:
    header = {"a": _F32_2x3, "b": {"dtype": "F32", "shape": [2], "data_offsets": [16, 24]}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(24)), "safetensors")
    assert (error.pointer, error.detail) == (
        "/file",
        "tensor 'b' at data_offsets [16, 24] overlaps tensor 'a', which ends at 24",
    )


def test_safetensors_offsets_out_of_range(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [24, 48]}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(24)), "safetensors")
    assert (error.pointer, error.detail) == (
        "/file",
        "tensor 'a' has data_offsets [24, 48], outside the 24-byte data section",
    )


def test_safetensors_offsets_reversed(tmp_path: Path) -> None:
    header = {"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(4)), "safetensors")
    assert error.detail == "tensor 'a' has data_offsets [4, 0], outside the 4-byte data section"


def test_safetensors_byte_size_does_not_match_dtype_and_shape(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(20)), "safetensors")
    assert (error.pointer, error.detail) == (
        "/file",
        "tensor 'a' spans 20 bytes, but F32 with shape [2, 3] needs 24 bytes",
    )


def test_safetensors_gap_between_tensors(tmp_path: Path) -> None:
    header = {"a": _F32_2x3, "b": {"dtype": "I64", "shape": [3], "data_offsets": [32, 56]}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(56)), "safetensors")
    assert error.detail == "tensor 'b' starts at data offset 32, leaving a gap after offset 24"


def test_safetensors_trailing_bytes_no_tensor_uses(tmp_path: Path) -> None:
    error = _invalid(_safetensors(tmp_path / "m.safetensors", {"a": _F32_2x3}, bytes(30)), "safetensors")
    assert error.detail == "the .safetensors data section is 30 bytes but its tensors cover only 24"


def test_safetensors_unknown_dtype(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(16)), "safetensors")
    assert error.detail == "tensor 'a' has unknown dtype 'F128'"


@pytest.mark.parametrize("shape", [[-1, 3], [2.0, 3], "2x3", [True, 3]])
def test_safetensors_bad_shape(tmp_path: Path, shape: Any) -> None:
    header = {"a": {"dtype": "F32", "shape": shape, "data_offsets": [0, 24]}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(24)), "safetensors")
    assert error.detail.startswith("tensor 'a' has shape")
    assert error.detail.endswith("expected a list of non-negative integers")


def test_safetensors_missing_tensor_fields(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2, 3]}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(24)), "safetensors")
    assert error.detail == "tensor 'a' needs dtype, shape and data_offsets in the header"


def test_safetensors_bad_metadata(tmp_path: Path) -> None:
    header = {"__metadata__": {"epoch": 3}, "a": _F32_2x3}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, bytes(24)), "safetensors")
    assert error.detail == "the .safetensors header's __metadata__ must map strings to strings"


def test_safetensors_without_tensors(tmp_path: Path) -> None:
    header = {"__metadata__": {"format": "pt"}}
    error = _invalid(_safetensors(tmp_path / "m.safetensors", header, b""), "safetensors")
    assert (error.pointer, error.detail) == ("/file", "the .safetensors file holds no tensors")
