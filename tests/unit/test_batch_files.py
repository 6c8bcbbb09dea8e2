"""Batch inference files on disk: datasets read back chunk by chunk exactly, outputs written and read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from core.file_validation import validate_file
from job_types.batch_files import BadData, NpzWriter, ParquetWriter, read_chunks, rechunk
from job_types.batch_spec import BatchInferenceSpec, plan_inputs

SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 3]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1]}],
}
RNG = np.random.default_rng(7)


def plan_for(path: Path, fmt: str, signature=SIGNATURE, **dataset):
    spec = BatchInferenceSpec.model_validate({"model": {"name": "m"}, "dataset": {"file_id": "file_0", **dataset}})
    return plan_inputs(signature, fmt, validate_file(path, fmt), spec)


def read_all(path: Path, fmt: str, plan, chunk_rows: int, tmp_path: Path) -> list[dict[str, np.ndarray]]:
    return list(read_chunks(path, fmt, plan, chunk_rows, tmp_path))


def test_rechunk_gives_exact_chunks_from_batches_of_any_size():
    batches = [pa.record_batch({"a": np.arange(start, stop)}) for start, stop in ((0, 3), (3, 4), (4, 11), (11, 12))]
    chunks = list(rechunk(batches, 5))
    assert [c.num_rows for c in chunks] == [5, 5, 2]
    assert np.concatenate([c.column("a").to_numpy() for c in chunks]).tolist() == list(range(12))


def test_an_npz_is_read_in_chunks_cast_to_the_inputs_dtype(tmp_path):
    x = RNG.normal(size=(10, 3))  # float64 on disk, FP32 in the model
    np.savez(tmp_path / "d.npz", X=x, y=np.arange(10))
    plan = plan_for(tmp_path / "d.npz", "npz")
    chunks = read_all(tmp_path / "d.npz", "npz", plan, 4, tmp_path)
    assert [c["x"].shape for c in chunks] == [(4, 3), (4, 3), (2, 3)]
    assert all(c["x"].dtype == np.float32 for c in chunks)
    np.testing.assert_array_equal(np.concatenate([c["x"] for c in chunks]), x.astype(np.float32))


def test_a_csv_and_a_parquet_give_the_same_feeds(tmp_path):
    x = RNG.integers(0, 9, size=(7, 3)).astype(np.float64)
    table = pa.table({"a": x[:, 0], "b": x[:, 1], "c": x[:, 2], "label": np.arange(7)})
    pq.write_table(table, tmp_path / "d.parquet")
    lines = ["a,b,c,label"] + [f"{r[0]},{r[1]},{r[2]},{i}" for i, r in enumerate(x)]
    (tmp_path / "d.csv").write_text("\n".join(lines) + "\n")
    for fmt in ("parquet", "csv"):
        path = tmp_path / f"d.{fmt}"
        chunks = read_all(path, fmt, plan_for(path, fmt), 3, tmp_path)
        assert [c["x"].shape[0] for c in chunks] == [3, 3, 1]
        np.testing.assert_array_equal(np.concatenate([c["x"] for c in chunks]), x.astype(np.float32))


def test_a_csv_row_with_a_gap_or_text_is_bad_data_with_its_row(tmp_path):
    (tmp_path / "gap.csv").write_text("a,b,c\n1,2,3\n4,,6\n")
    with pytest.raises(BadData, match="column 'b' has a missing value in data row 2"):
        read_all(tmp_path / "gap.csv", "csv", plan_for(tmp_path / "gap.csv", "csv"), 10, tmp_path)
    (tmp_path / "text.csv").write_text("a,b,c\n1,2,3\n4,five,6\n")
    with pytest.raises(BadData, match="column 'b' holds string"):
        read_all(tmp_path / "text.csv", "csv", plan_for(tmp_path / "text.csv", "csv"), 10, tmp_path)


def test_a_table_row_is_reshaped_for_an_image_input(tmp_path):
    image = {"inputs": [{"name": "img", "datatype": "FP32", "shape": [-1, 1, 2, 2]}], "outputs": []}
    (tmp_path / "d.csv").write_text("p0,p1,p2,p3\n0,1,2,3\n4,5,6,7\n")
    chunks = read_all(tmp_path / "d.csv", "csv", plan_for(tmp_path / "d.csv", "csv", image), 8, tmp_path)
    np.testing.assert_array_equal(chunks[0]["img"], np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2))


def test_npz_output_holds_every_chunk_in_order_with_strings_too(tmp_path):
    scores = RNG.normal(size=(5, 2, 3)).astype(np.float32)
    labels = np.array(["a", "bb", "c", "dd", "e"], dtype=object)
    writer = NpzWriter(tmp_path / "out.npz", 5, tmp_path)
    for start, stop in ((0, 2), (2, 4), (4, 5)):
        writer.write({"scores": scores[start:stop], "label": labels[start:stop]})
    writer.close()
    with np.load(tmp_path / "out.npz", allow_pickle=False) as out:
        np.testing.assert_array_equal(out["scores"], scores)
        assert out["label"].tolist() == labels.tolist()


def test_parquet_output_keeps_row_shapes_in_its_metadata(tmp_path):
    scores = RNG.normal(size=(5, 2, 3)).astype(np.float32)
    label = np.arange(5)
    writer = ParquetWriter(tmp_path / "out.parquet")
    writer.write({"scores": scores[:3], "label": label[:3]})
    writer.write({"scores": scores[3:], "label": label[3:]})
    writer.close()
    table = pq.read_table(tmp_path / "out.parquet")
    shapes = json.loads(table.schema.metadata[b"maas.shapes"])
    assert shapes == {"scores": [2, 3], "label": []}
    back = np.array(table.column("scores").to_pylist(), dtype=np.float32).reshape(-1, *shapes["scores"])
    np.testing.assert_array_equal(back, scores)
    assert table.column("label").to_pylist() == label.tolist()


def test_an_output_whose_row_shape_changes_between_chunks_is_refused(tmp_path):
    writer = NpzWriter(tmp_path / "out.npz", 4, tmp_path)
    writer.write({"h": np.zeros((2, 3), np.float32)})
    with pytest.raises(BadData, match=r"output 'h' has rows of shape \[5\], earlier ones \[3\]"):
        writer.write({"h": np.zeros((2, 5), np.float32)})
