"""The batch inference spec, and the pure plan that maps a dataset file onto a model's inputs.

A ``batch_inference`` job runs one model version (a named one, or the one deployed when the job
starts) over an uploaded dataset file in chunks of ``chunk_rows`` and writes the outputs as one
artifact: a ``.npz`` with one array per output, or a ``.parquet`` with one column per output.

Where each input comes from:

- a ``.npz`` feeds each model input from the array of the same name, or the one ``dataset.inputs``
  maps it to; a model with a single input also takes the array ``X`` (a training dataset works
  unchanged);
- a ``.csv`` or ``.parquet`` feeds a model with one ``[batch, features]`` input: the columns
  ``dataset.columns`` in that order, by default every column but the label column.

:func:`plan_inputs` checks all of that against the file's stored details (names, dtypes, shapes,
row counts) and the model's signature, so a job that cannot run is refused with a 422 naming
the spec field before it is created. The job type is ``job_types.batch_inference``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from core.input_feeds import FeedError, input_dtype, listed, npz_feed, shape_text
from core.spec_kit import (
    FILE_ID_PATTERN,
    INT4_MAX,
    FieldError,
    StoredDataset,
    StrictModel,
    numeric_column,
    stored_dataset,
)

MAX_CHUNK_ROWS = 65_536


class ModelRef(StrictModel):
    name: str = Field(min_length=1, max_length=128)
    version: int | None = Field(
        None, ge=1, le=INT4_MAX, description="the version to run; default: the one deployed when it starts"
    )


class BatchDataset(StrictModel):
    file_id: str = Field(pattern=FILE_ID_PATTERN, description="an uploaded dataset file (`file_…`)")
    inputs: dict[str, str] | None = Field(
        None, description=".npz only: model input name -> array name, where they differ"
    )
    columns: list[str] | None = Field(
        None, min_length=1, description=".csv/.parquet only: the feature columns, in the model's order"
    )
    label_column: str = Field("label", description="left out when columns is not given")


class BatchOutput(StrictModel):
    format: Literal["npz", "parquet"] = "npz"
    outputs: list[str] | None = Field(None, min_length=1, description="which model outputs to write; default: all")


class BatchInferenceSpec(StrictModel):
    model: ModelRef
    dataset: BatchDataset
    output: BatchOutput = BatchOutput()
    chunk_rows: int = Field(1024, ge=1, le=MAX_CHUNK_ROWS, description="rows per ONNX Runtime call")


class PlanError(FieldError):
    """The file or the spec does not fit the model; ``pointer`` is the spec field at fault."""


@dataclass(frozen=True)
class InputFeed:
    """Where one model input comes from: an array of a .npz, or columns of a table."""

    input: str
    dtype: str  # the numpy dtype the model takes
    array: str | None = None
    columns: tuple[str, ...] | None = None
    row_shape: tuple[int, ...] | None = None  # a table row reshaped for an input of higher rank


@dataclass(frozen=True)
class FeedPlan:
    """How a dataset file feeds a model: one feed per input, the outputs written, the rows."""

    feeds: tuple[InputFeed, ...]
    outputs: tuple[str, ...]
    rows: int


def _input_dtype(spec_input: Mapping[str, Any]) -> str:
    """The numpy dtype of a model input."""
    try:
        return input_dtype(spec_input, "/model")
    except FeedError as exc:
        raise PlanError(exc.pointer, exc.detail) from None


def plan_inputs(
    signature: Mapping[str, Any], file_format: str, details: Mapping[str, Any], spec: BatchInferenceSpec
) -> FeedPlan:
    """How the file feeds the model and which outputs are written; :class:`PlanError` when it cannot."""
    inputs = signature.get("inputs") or []
    for spec_input in inputs:
        shape = spec_input.get("shape")
        if shape is not None and (not shape or shape[0] != -1):
            raise PlanError(
                "/model",
                f"input '{spec_input['name']}' has no free first dimension (shape {shape}); "
                "batch inference feeds rows along the first dimension",
            )
    outputs = _outputs(signature, spec.output)
    try:
        stored = stored_dataset(details)
    except ValueError as exc:
        raise PlanError("/dataset/file_id", str(exc)) from None
    if file_format == "npz":
        feeds, rows = _npz_feeds(inputs, stored, spec.dataset)
    else:
        feeds, rows = _table_feeds(inputs, file_format, stored, spec.dataset)
    return FeedPlan(tuple(feeds), outputs, rows)


def _outputs(signature: Mapping[str, Any], output: BatchOutput) -> tuple[str, ...]:
    names = [o["name"] for o in signature.get("outputs") or []]
    if output.outputs is None:
        return tuple(names)
    for index, name in enumerate(output.outputs):
        if name not in names:
            raise PlanError(f"/output/outputs/{index}", f"the model has no output '{name}'; it has {listed(names)}")
    return tuple(dict.fromkeys(output.outputs))


def _npz_feeds(
    inputs: Sequence[Mapping[str, Any]], stored: StoredDataset, dataset: BatchDataset
) -> tuple[list[InputFeed], int]:
    if dataset.columns is not None:
        raise PlanError("/dataset/columns", "columns pick from a .csv or .parquet; a .npz is fed by array names")
    try:
        feed = npz_feed(inputs, stored.arrays or {}, dataset.inputs, data_pointer="/dataset", model_pointer="/model")
    except FeedError as exc:
        raise PlanError(exc.pointer, exc.detail) from None
    feeds = [InputFeed(name, feed.dtypes[name], array=array) for name, array in feed.arrays.items()]
    return feeds, feed.rows


def _table_feeds(
    inputs: Sequence[Mapping[str, Any]], file_format: str, stored: StoredDataset, dataset: BatchDataset
) -> tuple[list[InputFeed], int]:
    if dataset.inputs is not None:
        raise PlanError("/dataset/inputs", f"inputs map .npz arrays; a .{file_format} is fed by columns")
    if len(inputs) != 1:
        raise PlanError(
            "/dataset/file_id",
            f"a .{file_format} feeds a model with one input; this one takes {len(inputs)} "
            f"({listed([i['name'] for i in inputs])}): give a .npz with one array per input",
        )
    spec_input = inputs[0]
    columns = {column.name: column for column in stored.columns or ()}
    present = list(columns)
    if dataset.columns is None:
        chosen = [c for c in present if c != dataset.label_column]
        if not chosen:
            raise PlanError("/dataset/columns", "the file has no column besides the label column")
    else:
        chosen = dataset.columns
        for index, name in enumerate(chosen):
            if name not in present:
                raise PlanError(f"/dataset/columns/{index}", f"the file has no column '{name}'")
    dtype = _input_dtype(spec_input)
    if dtype == "object":
        raise PlanError("/dataset/file_id", f"model input '{spec_input['name']}' takes strings: give a .npz")
    for index, name in enumerate(chosen):
        column = columns[name]
        # a decimal column is numeric, but reads as Python objects: no model input takes those
        if not numeric_column(column) or (column.type or "").startswith("decimal"):
            pointer = f"/dataset/columns/{index}" if dataset.columns is not None else "/dataset/columns"
            raise PlanError(pointer, f"column '{name}' holds {column.type}; the model takes numbers")
    feed = InputFeed(
        spec_input["name"],
        dtype,
        columns=tuple(chosen),
        row_shape=_row_shape(len(chosen), spec_input),
    )
    return [feed], stored.rows


def _row_shape(width: int, spec_input: Mapping[str, Any]) -> tuple[int, ...] | None:
    """None when a row of ``width`` values fits the input as it is; else the fixed shape each row takes."""
    expected = spec_input.get("shape")
    if expected is None or (len(expected) == 2 and expected[1] in (-1, width)):
        return None
    row = expected[1:]
    if len(expected) > 2 and -1 not in row and int(np.prod(row)) == width:
        return tuple(row)
    detail = f"{width} columns do not fit model input '{spec_input['name']}', which takes {shape_text(expected)}"
    raise PlanError("/dataset/columns", detail)


def chunk_bounds(rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk, in order."""
    return [(start, min(start + chunk_rows, rows)) for start in range(0, rows, chunk_rows)]
