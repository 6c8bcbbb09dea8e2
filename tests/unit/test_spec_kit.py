"""The spec kit: JSON pointers for pydantic errors, the field error and the reader of stored upload details."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from core.spec_kit import (
    FieldError,
    OptionError,
    StoredArray,
    StoredColumn,
    StrictModel,
    json_pointer,
    numeric_column,
    stored_dataset,
    validation_problems,
)


class Inner(StrictModel):
    lr: float


class Spec(StrictModel):
    hyperparameters: Inner
    tags: list[str] = []


def test_pointer_escapes_per_rfc6901():
    assert json_pointer(("spec", "a/b", "c~d", 0)) == "/spec/a~1b/c~0d/0"
    assert json_pointer(()) == ""


def test_validation_errors_point_at_nested_fields_and_unknown_ones():
    with pytest.raises(ValidationError) as caught:
        Spec.model_validate({"hyperparameters": {"lr": "fast", "momentum": 0.9}, "tags": ["ok", 3]})
    pointers = sorted(e["pointer"] for e in validation_problems(caught.value, "/spec"))
    assert pointers == ["/spec/hyperparameters/lr", "/spec/hyperparameters/momentum", "/spec/tags/1"]


def test_a_field_error_names_its_pointer_and_moves_under_a_prefix():
    error = FieldError("/amount", "must be below 1")
    assert str(error) == "/amount: must be below 1"
    assert error.within("/passes/2").problem == {"pointer": "/passes/2/amount", "detail": "must be below 1"}
    option = OptionError("alpha", "must be between 0 and 1")
    assert option.field == "alpha" and option.pointer == "/alpha" and isinstance(option, FieldError)


def test_stored_details_of_each_format_read_alike():
    npz = stored_dataset(
        {"arrays": {"X": {"dtype": "float32", "shape": [5, 8, 8]}, "y": {"dtype": "int64", "shape": [5]}}}
    )
    assert npz.arrays == {"X": StoredArray("float32", (5, 8, 8)), "y": StoredArray("int64", (5,))}
    assert npz.rows == 5 and not npz.is_table
    csv = stored_dataset({"columns": ["a", "label"], "rows": 3})
    assert csv.is_table and csv.column_names == ["a", "label"] and csv.rows == 3
    parquet = stored_dataset({"columns": [{"name": "a", "type": "string"}, {"name": "b", "type": "double"}], "rows": 2})
    assert [numeric_column(c) for c in parquet.columns or ()] == [False, True]
    assert numeric_column(StoredColumn("csv column", None))
    with pytest.raises(ValueError, match="not a dataset"):
        stored_dataset({"signature": {}})
