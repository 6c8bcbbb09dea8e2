"""Training data: reading a dataset file (npz with arrays X and y; csv or parquet with a
label column) or a builtin, mapping labels to 0..C-1 (a regression head's labels stay
numbers: float32 targets, no classes), the seeded train/validation split,
and which rows each data-parallel replica sees at each step.

Data that cannot train the spec raises ``DatasetError(pointer, detail)``, the pointer
being into the training spec (``/dataset``, ``/validation``, ``/model/arch``...).
Rows are always flattened to float32 ``(rows, features)``; ``feature_shape`` keeps the
original per-row shape (an npz X of shape (n, 8, 8) has feature shape (8, 8)). A text
dataset (the spec's ``text_column``) becomes token ids instead, ``int64 (rows, tokens)``
(``training.text_data``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import torch
from torch.utils.data import DistributedSampler

from core.spec_kit import FieldError
from training.spec import MAX_CLASSES, DatasetSpec, TrainingSpec, is_regression, model_fit_problems, split_sizes


class DatasetError(FieldError):
    """The data does not fit the spec; ``pointer`` is a JSON pointer into the spec."""


@dataclass(frozen=True)
class Table:
    x: np.ndarray  # float32 (rows, features)
    y: np.ndarray  # raw labels (rows,)
    feature_shape: tuple[int, ...]


@dataclass(frozen=True)
class Splits:
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    classes: list[Any]  # classes[i] is the original label of class i; [] for a regression head
    feature_shape: tuple[int, ...]

    @property
    def regression(self) -> bool:
        """The targets are numbers (float32), not class indices."""
        return self.train_y.is_floating_point()

    @property
    def num_features(self) -> int:
        return self.train_x.shape[1]


# --- reading -----------------------------------------------------------------------------------


def read_table(path: Path | None, dataset: DatasetSpec, pointer: str = "/dataset") -> Table:
    """The rows of a dataset file (format sniffed from its first bytes) or of the builtin."""
    if dataset.builtin is not None:
        return load_builtin(dataset.builtin)
    if path is None:
        raise DatasetError(pointer, "the spec names an uploaded file but no data path was given")
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        raise DatasetError(pointer, f"cannot read the dataset file: {exc.strerror or exc}") from exc
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        if dataset.label_column is not None:
            raise DatasetError(
                f"{pointer}/label_column", "an npz file has arrays X and y; label_column is for csv/parquet"
            )
        return _read_npz(path, pointer)
    label = dataset.label_column or "label"
    if head == b"PAR1":
        return _table_from_arrow(_read_arrow(lambda: pq.read_table(path), "Parquet", pointer), label, pointer)
    return _table_from_arrow(_read_arrow(lambda: pa_csv.read_csv(path), "CSV", pointer), label, pointer)


def read_text_rows(path: Path | None, spec: TrainingSpec, pointer: str = "/dataset") -> Table:
    """A text dataset's rows as token ids (x) and raw labels (y), tokenized with the model's tokenizer."""
    from training.spec import TextEncoderSpec
    from training.text_data import TextTableError, read_text_table, tokenize_texts
    from training.text_encoder import load_tokenizer

    model, text_column = spec.model, spec.dataset.text_column
    assert isinstance(model, TextEncoderSpec) and text_column is not None  # the spec's cross-field rules
    if path is None:
        raise DatasetError(pointer, "the spec names an uploaded file but no data path was given")
    try:
        texts, labels = read_text_table(path, text_column, spec.dataset.label_column, pointer)
    except TextTableError as exc:
        raise DatasetError(exc.pointer, exc.detail) from None
    ids = tokenize_texts(load_tokenizer(model.pretrained), texts, model.max_length)
    return Table(x=ids, y=labels, feature_shape=(ids.shape[1],))


def load_builtin(name: str) -> Table:
    if name != "digits":
        raise DatasetError("/dataset/builtin", f"unknown builtin dataset '{name}'")
    from sklearn.datasets import load_digits  # imported here: only this dataset needs sklearn

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel intensities 0..16 → [0, 1]
    return Table(x=x, y=digits.target.astype(np.int64), feature_shape=(8, 8))


def _read_npz(path: Path, pointer: str) -> Table:
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ("X", "y") if name not in npz.files]
            if missing:
                raise DatasetError(pointer, f"an npz dataset needs arrays X and y; missing {' and '.join(missing)}")
            x, y = npz["X"], npz["y"]
    except (OSError, ValueError) as exc:
        raise DatasetError(pointer, f"not a readable npz file: {exc}") from exc
    if x.ndim < 2 or x.shape[1:] == () or 0 in x.shape[1:]:
        raise DatasetError(
            pointer, f"X must have one row per sample and at least one feature; its shape is {list(x.shape)}"
        )
    if x.dtype.kind not in "biuf":
        raise DatasetError(pointer, f"X must be numeric; its dtype is {x.dtype}")
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise DatasetError(pointer, f"y must hold one label per row of X ({x.shape[0]}); its shape is {list(y.shape)}")
    flat = x.reshape(x.shape[0], -1).astype(np.float32)
    _check_finite(flat, "X", pointer)
    return Table(x=flat, y=y, feature_shape=tuple(int(d) for d in x.shape[1:]))


def _read_arrow(read: Any, kind: str, pointer: str) -> pa.Table:
    try:
        return read()
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(pointer, f"not a readable {kind} file: {exc}") from exc


def _table_from_arrow(table: pa.Table, label: str, pointer: str) -> Table:
    if label not in table.column_names:
        where = f"{pointer}/label_column" if label != "label" else pointer
        raise DatasetError(where, f"there is no column '{label}'; columns are {', '.join(table.column_names[:20])}")
    features = [name for name in table.column_names if name != label]
    if not features:
        raise DatasetError(pointer, "the file has a label column but no feature columns")
    for name in [*features, label]:
        column = table.column(name)
        if name != label and not _numeric(column.type):
            raise DatasetError(pointer, f"feature column '{name}' has type {column.type}; features must be numeric")
        if column.null_count:
            raise DatasetError(pointer, f"column '{name}' has {column.null_count} missing values")
    x = np.stack([table.column(name).to_numpy().astype(np.float32) for name in features], axis=1)
    _check_finite(x, "the features", pointer)
    y = table.column(label).to_numpy(zero_copy_only=False)
    return Table(x=x, y=y, feature_shape=(len(features),))


def _numeric(arrow_type: pa.DataType) -> bool:
    return pa.types.is_integer(arrow_type) or pa.types.is_floating(arrow_type) or pa.types.is_boolean(arrow_type)


def _check_finite(x: np.ndarray, what: str, pointer: str) -> None:
    if not np.isfinite(x).all():
        raise DatasetError(pointer, f"{what} hold NaN or infinite values")


# --- labels and splits -------------------------------------------------------------------------


def encode_labels(
    labels: np.ndarray, classes: list[Any] | None = None, pointer: str = "/dataset"
) -> tuple[np.ndarray, list[Any]]:
    """Class indices 0..C-1 for ``labels`` and the class list (sorted labels); with
    ``classes`` given, labels must be among them."""
    labels = _normalise_labels(labels, pointer)
    if classes is None:
        found = np.unique(labels)
        if len(found) < 2:
            raise DatasetError(pointer, f"a classifier needs at least 2 classes; the labels hold {len(found)}")
        if len(found) > MAX_CLASSES:
            raise DatasetError(pointer, f"{len(found)} distinct labels exceed the {MAX_CLASSES}-class limit")
        classes = found.tolist()
    known = np.asarray(classes, dtype=labels.dtype)
    codes = np.searchsorted(known, labels)
    codes = np.clip(codes, 0, len(known) - 1)
    unknown = labels[known[codes] != labels]
    if unknown.size:
        raise DatasetError(pointer, f"label {unknown[0]!r} does not occur in the training data")
    return codes.astype(np.int64), list(classes)


def regression_targets(
    labels: np.ndarray, spec: TrainingSpec, pointer: str = "/dataset"
) -> tuple[np.ndarray, list[Any]]:
    """float32 targets of a regression head (and no classes); numbers only, all finite."""
    where = f"{pointer}/label_column" if pointer == "/dataset" and spec.dataset.label_column else pointer
    if labels.dtype.kind not in "fiub":
        raise DatasetError(where, f"the labels are {labels.dtype} values, not numbers; a regression head needs numbers")
    values = labels.astype(np.float32)
    _check_finite(values, "the labels", where)
    return values, []


def _normalise_labels(labels: np.ndarray, pointer: str) -> np.ndarray:
    if labels.dtype.kind == "f":
        if not np.isfinite(labels).all() or (labels != np.round(labels)).any():
            raise DatasetError(pointer, "the labels are not whole numbers; a classifier needs class labels")
        return labels.astype(np.int64)
    if labels.dtype.kind == "b":
        return labels.astype(np.int64)
    if labels.dtype.kind in "OUS":
        return labels.astype(str)
    return labels.astype(np.int64)


def split_indices(rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows), each sorted; the same for the same seed."""
    n_train, n_val = split_sizes(rows, fraction)
    if n_train < 1:
        raise DatasetError("/validation/fraction", f"{rows} rows leave none for training after the split")
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def load_splits(spec: TrainingSpec, data_path: Path | None, val_path: Path | None = None) -> Splits:
    """Train and validation tensors for ``spec``, checked against its model and batch size."""
    text = spec.dataset.text_column is not None
    table = read_text_rows(data_path, spec) if text else read_table(data_path, spec.dataset)
    for problem in model_fit_problems(spec.model, table.feature_shape):
        raise DatasetError(problem["pointer"], problem["detail"])
    regression = is_regression(spec)
    codes, classes = regression_targets(table.y, spec) if regression else encode_labels(table.y)
    if spec.validation.fraction is not None:
        train, val = split_indices(len(codes), spec.validation.fraction, spec.hyperparameters.seed)
        train_x, train_y, val_x, val_y = table.x[train], codes[train], table.x[val], codes[val]
    else:
        val_table = _read_validation(spec, val_path, table)
        train_x, train_y = table.x, codes
        val_x = val_table.x
        if regression:
            val_y, _ = regression_targets(val_table.y, spec, "/validation/file_id")
        else:
            val_y, _ = encode_labels(val_table.y, classes, "/validation/file_id")
    if spec.hyperparameters.batch_size > len(train_y):
        raise DatasetError(
            "/hyperparameters/batch_size",
            f"batch_size ({spec.hyperparameters.batch_size}) exceeds the {len(train_y)} training rows",
        )
    return Splits(
        train_x=torch.from_numpy(np.ascontiguousarray(train_x)),
        train_y=torch.from_numpy(train_y),
        val_x=torch.from_numpy(np.ascontiguousarray(val_x)),
        val_y=torch.from_numpy(val_y),
        classes=classes,
        feature_shape=table.feature_shape,
    )


def _read_validation(spec: TrainingSpec, val_path: Path | None, train: Table) -> Table:
    if val_path is None:
        raise DatasetError("/validation/file_id", "the spec names a validation file but no validation path was given")
    if spec.dataset.text_column is not None:
        # token ids of any width: the model takes any number of tokens
        return read_text_rows(val_path, spec, "/validation/file_id")
    val_spec = DatasetSpec(file_id=spec.validation.file_id, label_column=spec.dataset.label_column)
    table = read_table(val_path, val_spec, "/validation/file_id")
    if table.x.shape[1] != train.x.shape[1]:
        raise DatasetError(
            "/validation/file_id",
            f"the validation rows have {table.x.shape[1]} features, the training rows {train.x.shape[1]}",
        )
    return table


# --- sharding ----------------------------------------------------------------------------------


def steps_per_epoch(train_rows: int, global_batch: int) -> int:
    """Full global batches per epoch; the remainder rows of each (reshuffled) epoch are skipped."""
    return train_rows // global_batch


def shard_batches(train_rows: int, global_batch: int, replicas: int, rank: int, seed: int, epoch: int) -> np.ndarray:
    """This replica's row indices for every step of ``epoch``, shape (steps, global_batch /
    replicas). Replica r takes every replicas-th row of the epoch's shuffled order, so at
    each step the replicas together see exactly the rows one process would see."""
    sampler: DistributedSampler[int] = DistributedSampler(
        range(train_rows),  # type: ignore[arg-type]  # the sampler only takes len(); torch's stub says Dataset
        num_replicas=replicas,
        rank=rank,
        shuffle=True,
        seed=seed,
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    local = global_batch // replicas
    steps = steps_per_epoch(train_rows, global_batch)
    indices = np.fromiter(iter(sampler), dtype=np.int64)
    return indices[: steps * local].reshape(steps, local)
