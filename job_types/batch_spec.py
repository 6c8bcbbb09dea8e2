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

from core.onnx_signature import OIP_TO_NUMPY
from core.spec_kit import INT4_MAX, FieldError, StoredArray, StoredDataset, StrictModel, numeric_column, stored_dataset

MAX_CHUNK_ROWS = 65_536
SINGLE_INPUT_ARRAY = "X"  # the features array of a training .npz


class ModelRef(StrictModel):
    name: str = Field(min_length=1, max_length=128)
    version: int | None = Field(
        None, ge=1, le=INT4_MAX, description="the version to run; default: the one deployed when it starts"
    )


class BatchDataset(StrictModel):
    file_id: str
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


# which numpy dtype kinds may be cast to an input of each kind without losing meaning
_ACCEPTS = {"f": "biuf", "i": "biu", "u": "bu", "b": "b", "O": "SU"}


def _input_dtype(spec_input: Mapping[str, Any]) -> str:
    """The numpy dtype of a model input."""
    dtype = OIP_TO_NUMPY.get(spec_input["datatype"])
    if dtype is None:
        detail = f"input '{spec_input['name']}' takes {spec_input['datatype']}, which batch inference cannot feed"
        raise PlanError("/model", detail)
    return dtype


def castable(source: np.dtype | str, target: str) -> bool:
    """Whether values of dtype ``source`` may feed an input of numpy dtype ``target`` without losing meaning."""
    return np.dtype(source).kind in _ACCEPTS[np.dtype(target).kind]


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
            raise PlanError(f"/output/outputs/{index}", f"the model has no output '{name}'; it has {_listed(names)}")
    return tuple(dict.fromkeys(output.outputs))


def _npz_feeds(
    inputs: Sequence[Mapping[str, Any]], stored: StoredDataset, dataset: BatchDataset
) -> tuple[list[InputFeed], int]:
    if dataset.columns is not None:
        raise PlanError("/dataset/columns", "columns pick from a .csv or .parquet; a .npz is fed by array names")
    arrays: Mapping[str, StoredArray] = stored.arrays or {}
    names = [i["name"] for i in inputs]
    mapping = dataset.inputs or {}
    for input_name, mapped in mapping.items():
        if input_name not in names:
            raise PlanError(f"/dataset/inputs/{input_name}", f"the model has no input '{input_name}'")
        if mapped not in arrays:
            raise PlanError(f"/dataset/inputs/{input_name}", f"the file has no array '{mapped}'; {_arrays(arrays)}")
    feeds, rows_by_array = [], {}
    for spec_input in inputs:
        name = spec_input["name"]
        array = mapping.get(name) or _default_array(name, len(inputs), arrays)
        pointer = f"/dataset/inputs/{name}" if name in mapping else "/dataset/file_id"
        if array is None:
            raise PlanError(
                "/dataset/inputs", f"nothing feeds model input '{name}': {_arrays(arrays)}; map it in dataset.inputs"
            )
        found = arrays[array]
        if not found.shape:
            raise PlanError(pointer, f"array '{array}' is a scalar; it needs one row per item")
        dtype = _input_dtype(spec_input)
        if not castable(found.dtype, dtype):
            raise PlanError(
                pointer, f"array '{array}' holds {found.dtype}; model input '{name}' takes {spec_input['datatype']}"
            )
        _check_shape(pointer, f"array '{array}'", found.shape, spec_input)
        rows_by_array[array] = found.shape[0]
        feeds.append(InputFeed(name, dtype, array=array))
    if len(set(rows_by_array.values())) > 1:
        counts = ", ".join(f"'{a}' {r}" for a, r in rows_by_array.items())
        raise PlanError("/dataset/file_id", f"the arrays feeding the model have different row counts: {counts}")
    return feeds, next(iter(rows_by_array.values()), 0)


def _default_array(name: str, input_count: int, arrays: Mapping[str, Any]) -> str | None:
    if name in arrays:
        return name
    if input_count == 1 and SINGLE_INPUT_ARRAY in arrays:
        return SINGLE_INPUT_ARRAY
    return None


def _check_shape(pointer: str, what: str, shape: Sequence[int], spec_input: Mapping[str, Any]) -> None:
    expected = spec_input.get("shape")
    if expected is None:
        return
    fits = len(shape) == len(expected) and all(e in (-1, s) for e, s in zip(expected[1:], shape[1:], strict=True))
    if not fits:
        raise PlanError(
            pointer, f"{what} has shape {list(shape)}; model input '{spec_input['name']}' takes {_shape(expected)}"
        )


def _table_feeds(
    inputs: Sequence[Mapping[str, Any]], file_format: str, stored: StoredDataset, dataset: BatchDataset
) -> tuple[list[InputFeed], int]:
    if dataset.inputs is not None:
        raise PlanError("/dataset/inputs", f"inputs map .npz arrays; a .{file_format} is fed by columns")
    if len(inputs) != 1:
        raise PlanError(
            "/dataset/file_id",
            f"a .{file_format} feeds a model with one input; this one takes {len(inputs)} "
            f"({_listed([i['name'] for i in inputs])}): give a .npz with one array per input",
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
    detail = f"{width} columns do not fit model input '{spec_input['name']}', which takes {_shape(expected)}"
    raise PlanError("/dataset/columns", detail)


def chunk_bounds(rows: int, chunk_rows: int) -> list[tuple[int, int]]:
    """``[start, stop)`` of each chunk, in order."""
    return [(start, min(start + chunk_rows, rows)) for start in range(0, rows, chunk_rows)]


def _shape(shape: Sequence[int]) -> str:
    dims = ("batch" if axis == 0 else ("any" if d == -1 else str(d)) for axis, d in enumerate(shape))
    return "[" + ", ".join(dims) + "]"


def _listed(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "none"


def _arrays(arrays: Mapping[str, Any]) -> str:
    return f"the file's arrays are {_listed(list(arrays))}"
