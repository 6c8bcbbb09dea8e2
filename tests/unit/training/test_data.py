"""Dataset files, labels, the seeded split and per-replica sharding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from training.data import (
    DatasetError,
    encode_labels,
    load_splits,
    read_table,
    shard_batches,
    split_indices,
    steps_per_epoch,
)
from training.spec import DatasetSpec, TrainingSpec

FILE = DatasetSpec(file_id="file_01abc")


def write_npz(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def write_csv(path: Path, columns: dict[str, list[Any]]) -> Path:
    pa_csv.write_csv(pa.table(columns), path)
    return path


def spec(model: str = "mlp", **extra: Any) -> TrainingSpec:
    return TrainingSpec.model_validate({"model": {"arch": model}, "dataset": {"file_id": "file_01abc"}, **extra})


def error_of(call: Any) -> tuple[str, str]:
    with pytest.raises(DatasetError) as info:
        call()
    return info.value.pointer, info.value.detail


# --- reading -----------------------------------------------------------------------------------


def test_npz_rows_are_flattened_and_keep_their_shape(tmp_path: Path) -> None:
    x = np.arange(3 * 4 * 4, dtype=np.float64).reshape(3, 4, 4)
    table = read_table(write_npz(tmp_path / "d.npz", X=x, y=np.array(["b", "a", "b"])), FILE)
    assert table.x.shape == (3, 16) and table.x.dtype == np.float32
    assert table.feature_shape == (4, 4)
    assert np.array_equal(table.x[1], x[1].reshape(-1))


def test_csv_and_parquet_read_the_label_column(tmp_path: Path) -> None:
    columns = {"a": [1.0, 2.0, 3.0], "target": ["x", "y", "x"], "b": [4, 5, 6]}
    with_label = DatasetSpec(file_id="file_01abc", label_column="target")
    pq.write_table(pa.table(columns), tmp_path / "d.parquet")
    for path in (write_csv(tmp_path / "d.csv", columns), tmp_path / "d.parquet"):
        table = read_table(path, with_label)
        assert table.x.tolist() == [[1, 4], [2, 5], [3, 6]]
        assert table.y.tolist() == ["x", "y", "x"]


def test_the_format_is_read_from_the_content_not_the_name(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.zeros((2, 3)), y=np.array([0, 1]))
    renamed = path.rename(tmp_path / "file_01abc")
    assert read_table(renamed, FILE).x.shape == (2, 3)


def test_the_builtin_digits_are_scaled_to_unit_range() -> None:
    table = read_table(None, DatasetSpec(builtin="digits"))
    assert table.x.shape == (1797, 64) and table.feature_shape == (8, 8)
    assert table.x.min() == 0.0 and table.x.max() == 1.0


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"X": np.zeros((4, 2))}, "missing y"),
        ({"X": np.zeros(4), "y": np.zeros(4)}, "shape"),
        ({"X": np.zeros((4, 2)), "y": np.zeros(3)}, "one label per row"),
        ({"X": np.array([["a"], ["b"]]), "y": np.zeros(2)}, "numeric"),
        ({"X": np.array([[np.nan], [1.0]]), "y": np.zeros(2)}, "NaN"),
    ],
)
def test_unfit_npz_files_are_refused(tmp_path: Path, arrays: dict[str, Any], fragment: str) -> None:
    path = write_npz(tmp_path / "d.npz", **arrays)
    pointer, detail = error_of(lambda: read_table(path, FILE))
    assert pointer == "/dataset" and fragment in detail


def test_an_npz_takes_no_label_column(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.zeros((2, 2)), y=np.zeros(2))
    pointer, _ = error_of(lambda: read_table(path, DatasetSpec(file_id="file_01abc", label_column="y")))
    assert pointer == "/dataset/label_column"


def test_table_problems_are_refused(tmp_path: Path) -> None:
    no_label = write_csv(tmp_path / "a.csv", {"a": [1, 2], "b": [0, 1]})
    assert error_of(lambda: read_table(no_label, FILE))[0] == "/dataset"
    named = DatasetSpec(file_id="file_01abc", label_column="target")
    assert error_of(lambda: read_table(no_label, named))[0] == "/dataset/label_column"
    text = write_csv(tmp_path / "b.csv", {"a": ["x", "y"], "label": [0, 1]})
    assert "numeric" in error_of(lambda: read_table(text, FILE))[1]
    (tmp_path / "c.csv").write_text("a,label\n1,0\n,1\n")
    assert "missing" in error_of(lambda: read_table(tmp_path / "c.csv", FILE))[1]
    (tmp_path / "e.csv").write_text("label\n1\n0\n")
    assert "no feature columns" in error_of(lambda: read_table(tmp_path / "e.csv", FILE))[1]


def test_a_missing_file_is_a_dataset_error(tmp_path: Path) -> None:
    assert error_of(lambda: read_table(tmp_path / "nope.npz", FILE))[0] == "/dataset"


# --- labels ------------------------------------------------------------------------------------


def test_labels_map_to_sorted_class_indices() -> None:
    codes, classes = encode_labels(np.array(["cat", "dog", "cat", "ant"]))
    assert classes == ["ant", "cat", "dog"]
    assert codes.tolist() == [1, 2, 1, 0]
    codes, classes = encode_labels(np.array([7.0, 3.0, 7.0]))
    assert classes == [3, 7] and codes.tolist() == [1, 0, 1]


def test_labels_outside_the_known_classes_are_refused() -> None:
    with pytest.raises(DatasetError, match="'bird'"):
        encode_labels(np.array(["cat", "bird"]), ["cat", "dog"], "/validation/file_id")


@pytest.mark.parametrize("labels", [np.array([1, 1, 1]), np.array([0.5, 1.0, 2.0])])
def test_labels_that_cannot_train_a_classifier_are_refused(labels: np.ndarray) -> None:
    with pytest.raises(DatasetError):
        encode_labels(labels)


# --- splitting ---------------------------------------------------------------------------------


def test_the_split_is_disjoint_complete_and_seeded() -> None:
    train, val = split_indices(100, 0.2, seed=1)
    assert len(val) == 20 and len(train) == 80
    assert sorted([*train, *val]) == list(range(100))
    again_train, again_val = split_indices(100, 0.2, seed=1)
    assert np.array_equal(val, again_val) and np.array_equal(train, again_train)
    assert not np.array_equal(val, split_indices(100, 0.2, seed=2)[1])


def test_load_splits_holds_out_the_fraction(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.random.rand(50, 4), y=np.arange(50) % 3)
    splits = load_splits(spec(validation={"fraction": 0.2}, hyperparameters={"batch_size": 8}), path)
    assert len(splits.train_y) == 40 and len(splits.val_y) == 10
    assert splits.classes == [0, 1, 2] and splits.num_features == 4


def test_load_splits_checks_the_model_and_the_batch(tmp_path: Path) -> None:
    path = write_npz(tmp_path / "d.npz", X=np.random.rand(50, 10), y=np.arange(50) % 2)
    assert error_of(lambda: load_splits(spec("cnn"), path))[0] == "/model/arch"
    big_batch = spec(hyperparameters={"batch_size": 64})
    assert error_of(lambda: load_splits(big_batch, path))[0] == "/hyperparameters/batch_size"


def test_a_validation_file_is_encoded_with_the_training_classes(tmp_path: Path) -> None:
    train = write_npz(tmp_path / "t.npz", X=np.random.rand(20, 3), y=np.array(["a", "b"] * 10))
    val = write_npz(tmp_path / "v.npz", X=np.random.rand(4, 3), y=np.array(["b", "b", "a", "b"]))
    with_file = spec(validation={"file_id": "file_02val"}, hyperparameters={"batch_size": 4})
    splits = load_splits(with_file, train, val)
    assert splits.val_y.tolist() == [1, 1, 0, 1]
    wrong = write_npz(tmp_path / "w.npz", X=np.random.rand(4, 5), y=np.array(["a"] * 4))
    assert error_of(lambda: load_splits(with_file, train, wrong))[0] == "/validation/file_id"
    assert error_of(lambda: load_splits(with_file, train, None))[0] == "/validation/file_id"


# --- sharding ----------------------------------------------------------------------------------


def test_replicas_together_see_exactly_the_single_process_batches() -> None:
    rows, batch = 103, 12
    single = shard_batches(rows, batch, replicas=1, rank=0, seed=5, epoch=2)
    assert single.shape == (steps_per_epoch(rows, batch), batch)
    for replicas in (2, 3, 4):
        shards = [shard_batches(rows, batch, replicas, rank, seed=5, epoch=2) for rank in range(replicas)]
        assert all(s.shape == (single.shape[0], batch // replicas) for s in shards)
        for step in range(single.shape[0]):
            together = np.concatenate([s[step] for s in shards])
            assert sorted(together) == sorted(single[step])


def test_every_epoch_is_reshuffled_and_repeatable() -> None:
    first = shard_batches(64, 8, 1, 0, seed=0, epoch=0)
    assert not np.array_equal(first, shard_batches(64, 8, 1, 0, seed=0, epoch=1))
    assert np.array_equal(first, shard_batches(64, 8, 1, 0, seed=0, epoch=0))
    assert len(np.unique(first)) == 64
