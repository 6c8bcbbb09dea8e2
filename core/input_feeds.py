"""How the arrays of a ``.npz`` feed a model's named inputs: the pure rules that batch inference
and compression share, checked against the model's signature and the arrays' dtypes and shapes.

Each model input is fed by the array of the same name, or by the array a mapping (``inputs``:
model input name -> array name) names; a model with a single input also takes the array ``X``.
An array may feed an input when its values cast to the input's dtype without losing meaning
(:func:`castable`), it has one row per item, its rank is the input's and its fixed dims match;
every array fed must have the same number of rows.

:func:`npz_feed` raises :class:`FeedError` naming the field at fault as a JSON pointer under the
caller's data field (``{data}/file_id``, ``{data}/inputs/{name}``, ``{data}/inputs``), or the
model field for an input no array can feed. The arrays are described as the upload validator
records them (:class:`core.spec_kit.StoredArray`), so the same checks run on stored details
before a job is created and on a file's arrays once it is read.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.onnx_signature import OIP_TO_NUMPY
from core.spec_kit import FieldError, StoredArray

SINGLE_INPUT_ARRAY = "X"  # the features array of a training .npz

# which numpy dtype kinds may be cast to an input of each kind without losing meaning
_ACCEPTS = {"f": "biuf", "i": "biu", "u": "bu", "b": "b", "O": "SU"}


class FeedError(FieldError):
    """The arrays do not fit the model's inputs; ``pointer`` is the field at fault."""


@dataclass(frozen=True)
class NpzFeed:
    """Which array feeds each model input (in the model's order), as which dtype, and the rows."""

    arrays: dict[str, str]  # model input -> array name
    dtypes: dict[str, str]  # model input -> numpy dtype it takes
    rows: int


def castable(source: np.dtype | str, target: str) -> bool:
    """Whether values of dtype ``source`` may feed an input of numpy dtype ``target`` without losing meaning."""
    return np.dtype(source).kind in _ACCEPTS[np.dtype(target).kind]


def input_dtype(spec_input: Mapping[str, Any], model_pointer: str) -> str:
    """The numpy dtype of a model input (a signature entry: ``name``, ``datatype``, ``shape``)."""
    dtype = OIP_TO_NUMPY.get(spec_input["datatype"])
    if dtype is None:
        detail = f"input '{spec_input['name']}' takes {spec_input['datatype']}, which no array can feed"
        raise FeedError(model_pointer, detail)
    return dtype


def default_array(name: str, input_count: int, arrays: Mapping[str, Any]) -> str | None:
    """The array that feeds input ``name`` without a mapping: its namesake, else ``X`` for a single input."""
    if name in arrays:
        return name
    if input_count == 1 and SINGLE_INPUT_ARRAY in arrays:
        return SINGLE_INPUT_ARRAY
    return None


def npz_feed(
    inputs: Sequence[Mapping[str, Any]],
    arrays: Mapping[str, StoredArray],
    mapping: Mapping[str, str] | None,
    *,
    data_pointer: str,
    model_pointer: str,
) -> NpzFeed:
    """How ``arrays`` feed the model ``inputs`` (its signature's), by the rules in the module docstring."""
    names = [i["name"] for i in inputs]
    mapping = mapping or {}
    for input_name, mapped in mapping.items():
        if input_name not in names:
            raise FeedError(
                f"{data_pointer}/inputs/{input_name}", f"the model has no input '{input_name}'; it has {listed(names)}"
            )
        if mapped not in arrays:
            raise FeedError(
                f"{data_pointer}/inputs/{input_name}", f"the file has no array '{mapped}'; {_arrays(arrays)}"
            )
    chosen: dict[str, str] = {}
    dtypes: dict[str, str] = {}
    rows_by_array: dict[str, int] = {}
    for spec_input in inputs:
        name = spec_input["name"]
        array = mapping.get(name) or default_array(name, len(inputs), arrays)
        pointer = f"{data_pointer}/inputs/{name}" if name in mapping else f"{data_pointer}/file_id"
        if array is None:
            raise FeedError(
                f"{data_pointer}/inputs",
                f"nothing feeds model input '{name}': {_arrays(arrays)}; name an array after it or map it in inputs",
            )
        found = arrays[array]
        if not found.shape:
            raise FeedError(pointer, f"array '{array}' is a scalar; it needs one row per item")
        dtype = input_dtype(spec_input, model_pointer)
        if not castable(found.dtype, dtype):
            raise FeedError(
                pointer, f"array '{array}' holds {found.dtype}; model input '{name}' takes {spec_input['datatype']}"
            )
        check_shape(pointer, f"array '{array}'", found.shape, spec_input)
        rows_by_array[array] = found.shape[0]
        chosen[name], dtypes[name] = array, dtype
    if len(set(rows_by_array.values())) > 1:
        counts = ", ".join(f"'{a}' {r}" for a, r in rows_by_array.items())
        raise FeedError(f"{data_pointer}/file_id", f"the arrays feeding the model have different row counts: {counts}")
    return NpzFeed(chosen, dtypes, next(iter(rows_by_array.values()), 0))


def check_shape(pointer: str, what: str, shape: Sequence[int], spec_input: Mapping[str, Any]) -> None:
    """Raise :class:`FeedError` unless ``shape`` has the input's rank and its fixed dims after the batch."""
    expected = spec_input.get("shape")
    if expected is None:
        return
    fits = len(shape) == len(expected) and all(e in (-1, s) for e, s in zip(expected[1:], shape[1:], strict=True))
    if not fits:
        raise FeedError(
            pointer, f"{what} has shape {list(shape)}; model input '{spec_input['name']}' takes {shape_text(expected)}"
        )


def shape_text(shape: Sequence[int]) -> str:
    """A signature shape for people: ``[batch, any, 384]``."""
    dims = ("batch" if axis == 0 else ("any" if d == -1 else str(d)) for axis, d in enumerate(shape))
    return "[" + ", ".join(dims) + "]"


def listed(names: Sequence[str]) -> str:
    return ", ".join(f"'{n}'" for n in names) or "none"


def _arrays(arrays: Mapping[str, Any]) -> str:
    return f"the file's arrays are {listed(list(arrays))}"
