"""The rows a compression run works on: fine-tuning rows, eval rows, calibration rows.

Owns: reading a data file (npz with ``X`` and optionally ``y``; csv or parquet with an optional
label column; the builtin ``digits``) into flat float32 rows, or an npz into one array per named
model input (``compression.spec.named_feed``: the rules batch inference feeds by, checked again
on the arrays themselves, with the same messages as before the job was created); mapping labels
to the model's class indices (a regression model's: to float targets); and the rules that decide
which rows go where (``assemble``): when the eval data is the training data, a seeded fraction is
held out for evaluation and the rest fine-tunes; calibration rows come from their own file, else
the training rows, else the eval rows, evenly
spread. Reading files is kept apart from those rules: ``assemble`` takes a ``load`` callable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from compression.spec import (
    LABELS_ARRAY,
    CompressionSpec,
    DataSpec,
    QuantizeSpec,
    Task,
    feeds_named_inputs,
    named_feed,
)
from core.input_feeds import FeedError
from core.spec_kit import FieldError, StoredArray
from training.data import encode_labels, load_builtin, split_indices

Inputs = np.ndarray | dict[str, np.ndarray]
"""A model's input rows: flat float32 ``(rows, features)`` for a model with one input, or one
array per named input (each with the rows along its first axis)."""


class DataError(FieldError):
    """Data that cannot be used as the spec says; ``pointer`` points into the spec."""


def count_rows(x: Inputs) -> int:
    return int(next(iter(x.values())).shape[0] if isinstance(x, dict) else x.shape[0])


def select_rows(x: Inputs, index: np.ndarray | slice) -> Inputs:
    """The rows ``index`` of every array."""
    return {name: array[index] for name, array in x.items()} if isinstance(x, dict) else x[index]


@dataclass(frozen=True)
class Rows:
    x: Inputs
    y: np.ndarray | None  # raw labels (rows,), None without labels

    def take(self, index: np.ndarray) -> Rows:
        return Rows(select_rows(self.x, index), None if self.y is None else self.y[index])

    def __len__(self) -> int:
        return count_rows(self.x)


@dataclass(frozen=True)
class PipelineData:
    """Rows by role; labels are class indices (int64) into the model's outputs, or a regression
    model's targets (float64) when ``task`` says so."""

    eval_x: Inputs
    eval_y: np.ndarray | None
    train_x: Inputs | None = None
    train_y: np.ndarray | None = None
    calibration: dict[int, Inputs] = field(default_factory=dict)  # pass index -> rows
    notes: list[str] = field(default_factory=list)
    dataset: DataSpec | None = None  # what the training rows came from
    split: tuple[float, int] | None = None  # (fraction, seed) when eval rows were held out of it
    task: Task = "classification"


# --- reading (I/O) -----------------------------------------------------------------------------


def read_rows(path: Path | None, data: DataSpec, pointer: str, inputs: Sequence[Mapping[str, Any]] = ()) -> Rows:
    """The rows of a data file (format sniffed from its first bytes) or of the builtin.
    ``inputs`` is the model's signature (``name``, ``datatype``, ``shape`` each) when known."""
    if data.builtin is not None:
        table = load_builtin(data.builtin)
        return Rows(table.x, table.y)
    if path is None:
        raise DataError(pointer, "the spec names a file but no path was given")
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return _read_npz(path, data, pointer, inputs)
    if data.inputs is not None:
        raise DataError(
            f"{pointer}/inputs", "inputs map the arrays of an .npz to a model's named inputs; this file is a table"
        )
    try:
        table = pq.read_table(path) if head == b"PAR1" else pa_csv.read_csv(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(pointer, f"not a readable data file: {exc}") from exc
    return _rows_from_arrow(table, data.label_column, pointer)


def _read_npz(path: Path, data: DataSpec, pointer: str, inputs: Sequence[Mapping[str, Any]]) -> Rows:
    with np.load(path, allow_pickle=False) as npz:
        if feeds_named_inputs(inputs, npz.files, data.inputs):
            return _named_rows({name: npz[name] for name in npz.files}, data, pointer, inputs)
        if "X" not in npz.files:
            raise DataError(pointer, f"an npz needs an array X (found {', '.join(npz.files)})")
        x, y = npz["X"], (npz["y"] if "y" in npz.files else None)
    if x.ndim < 2:
        raise DataError(pointer, f"X must have one row per sample; its shape is {list(x.shape)}")
    if y is not None and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y is not None and y.shape != (x.shape[0],):
        raise DataError(pointer, f"y must hold one label per row of X ({x.shape[0]}); its shape is {list(y.shape)}")
    return Rows(_finite(x.reshape(x.shape[0], -1).astype(np.float32), pointer), y)


def _named_rows(
    arrays: dict[str, np.ndarray], data: DataSpec, pointer: str, inputs: Sequence[Mapping[str, Any]]
) -> Rows:
    """One array per model input, as the input's dtype, and the labels ``y`` when no input takes them."""
    described = {name: StoredArray(str(array.dtype), tuple(array.shape)) for name, array in arrays.items()}
    try:
        feed, labelled = named_feed(inputs, described, data, pointer)
    except FeedError as exc:
        raise DataError(exc.pointer, exc.detail) from None
    x = {name: np.ascontiguousarray(arrays[array], dtype=feed.dtypes[name]) for name, array in feed.arrays.items()}
    for name, array in x.items():
        if array.dtype.kind == "f":
            _finite(array, f"{pointer}/file_id", f"array '{feed.arrays[name]}' holds")
    y = arrays[LABELS_ARRAY] if labelled else None
    if y is not None and y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y is not None and y.shape != (feed.rows,):
        detail = f"{LABELS_ARRAY} must hold one label per row ({feed.rows}); its shape is {list(y.shape)}"
        raise DataError(f"{pointer}/file_id", detail)
    return Rows(x, y)


def _rows_from_arrow(table: pa.Table, label_column: str | None, pointer: str) -> Rows:
    names = table.column_names
    if label_column is not None and label_column not in names:
        raise DataError(f"{pointer}/label_column", f"there is no column '{label_column}'")
    label = label_column or ("label" if "label" in names else None)
    features = [n for n in names if n != label]
    try:
        x = np.stack([table.column(n).to_numpy().astype(np.float32) for n in features], axis=1)
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise DataError(pointer, f"the feature columns must be numeric without gaps: {exc}") from exc
    y = table.column(label).to_numpy(zero_copy_only=False) if label else None
    return Rows(_finite(x, pointer), y)


def _finite(x: np.ndarray, pointer: str, what: str = "the rows hold") -> np.ndarray:
    if not np.isfinite(x).all():
        raise DataError(pointer, f"{what} NaN or infinite values")
    return x


# --- labels and rows (pure) --------------------------------------------------------------------


def class_indices(y: np.ndarray, classes: list[Any] | None, num_outputs: int, pointer: str) -> np.ndarray:
    """Labels as indices into the model's ``num_outputs``: through the source's class list when
    the platform knows it, else integer labels as they are when they fit, else sorted labels."""
    try:
        if classes is not None:
            return encode_labels(y, classes, pointer)[0]
        if y.dtype.kind in "iub" or (y.dtype.kind == "f" and np.all(y == np.round(y))):
            as_int = y.astype(np.int64)
            if as_int.size and as_int.min() >= 0 and as_int.max() < num_outputs:
                return as_int
        codes, found = encode_labels(y, None, pointer)
    except Exception as exc:  # training.data raises its own DatasetError
        raise DataError(pointer, getattr(exc, "detail", str(exc))) from exc
    if len(found) > num_outputs:
        raise DataError(pointer, f"{len(found)} distinct labels, but the model has {num_outputs} outputs")
    return codes


def regression_targets(y: np.ndarray, pointer: str) -> np.ndarray:
    """A regression model's labels as float64 targets: numbers, all finite."""
    if y.dtype.kind not in "iuf":
        raise DataError(pointer, f"the labels are {y.dtype} values; a regression model needs numbers")
    targets = y.astype(np.float64)
    if not np.isfinite(targets).all():
        raise DataError(pointer, "the labels hold NaN or infinite values")
    return targets


def spread(rows: int, count: int) -> np.ndarray:
    """``count`` row indices evenly spread over ``rows`` (all of them when there are fewer)."""
    if count >= rows:
        return np.arange(rows)
    return np.linspace(0, rows - 1, count).round().astype(np.int64)


def assemble(
    spec: CompressionSpec,
    load: Callable[[DataSpec, str], Rows],
    *,
    num_outputs: int,
    classes: list[Any] | None = None,
    default_dataset: DataSpec | None = None,
    default_split: tuple[float, int] | None = None,
    task: Task = "classification",
) -> PipelineData:
    """Which rows fine-tune, evaluate and calibrate, by the rules in the module docstring.

    ``default_dataset`` stands in for a missing ``dataset`` (the data the source was trained
    on); ``default_split`` (fraction, seed) for an ``eval.fraction`` the spec leaves out, so
    that the eval rows are the source's own validation rows. A ``regression`` model's labels stay
    numbers (``regression_targets``)."""
    dataset = spec.dataset or default_dataset
    notes: list[str] = []
    eval_rows = load(spec.eval, "/eval")
    train_rows, split = None, None
    if dataset is not None and spec.eval.same_data(dataset):
        fraction, seed = spec.eval.fraction, spec.eval.seed
        if default_split is not None and "fraction" not in spec.eval.model_fields_set:
            fraction, seed = default_split
        split = (fraction, seed)
        train_index, eval_index = split_indices(len(eval_rows), fraction, seed)
        train_rows, eval_rows = eval_rows.take(train_index), eval_rows.take(eval_index)
        notes.append(f"eval: {len(eval_rows)} rows held out (fraction {fraction}, seed {seed}) from the dataset")
    elif dataset is not None:
        train_rows = load(dataset, "/dataset")
    if spec.eval.max_rows is not None and len(eval_rows) > spec.eval.max_rows:
        eval_rows = eval_rows.take(spread(len(eval_rows), spec.eval.max_rows))

    def labels(y: np.ndarray | None, pointer: str) -> np.ndarray | None:
        if y is None:
            return None
        return (
            regression_targets(y, pointer) if task == "regression" else class_indices(y, classes, num_outputs, pointer)
        )

    eval_y = labels(eval_rows.y, "/eval")
    train_y = labels(None if train_rows is None else train_rows.y, "/dataset")
    return PipelineData(
        eval_x=eval_rows.x,
        eval_y=eval_y,
        train_x=None if train_rows is None else train_rows.x,
        train_y=train_y,
        calibration=_calibration(spec, load, train_rows, eval_rows, notes),
        notes=notes,
        dataset=dataset,
        split=split,
        task=task,
    )


def _calibration(
    spec: CompressionSpec,
    load: Callable[[DataSpec, str], Rows],
    train_rows: Rows | None,
    eval_rows: Rows,
    notes: list[str],
) -> dict[int, Inputs]:
    chosen: dict[int, Inputs] = {}
    for index, item in enumerate(spec.passes):
        if not (isinstance(item, QuantizeSpec) and item.needs_calibration):
            continue
        calibration = item.effective_calibration
        if calibration.data is not None:
            rows, where = load(calibration.data, f"/passes/{index}/calibration"), "its own data"
        elif train_rows is not None:
            rows, where = train_rows, "the training rows"
        else:
            rows, where = eval_rows, "the eval rows (no other data was given)"
        chosen[index] = select_rows(rows.x, spread(len(rows), calibration.rows))
        notes.append(f"pass {index} calibrates on {count_rows(chosen[index])} rows of {where}")
    return chosen
