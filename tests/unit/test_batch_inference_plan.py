"""How a dataset file's stored details are mapped onto a model's inputs, and every refusal with its field."""

from __future__ import annotations

from typing import Any

import pytest

from core.input_feeds import castable
from job_types.batch_spec import BatchInferenceSpec, PlanError, chunk_bounds, plan_inputs

LINEAR = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "scores", "datatype": "FP32", "shape": [-1, 3]}, {"name": "label", "datatype": "INT64"}],
}
PAIR = {
    "inputs": [
        {"name": "ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "mask", "datatype": "INT64", "shape": [-1, -1]},
    ],
    "outputs": [{"name": "total", "datatype": "FP32", "shape": [-1]}],
}


def spec(**overrides: Any) -> BatchInferenceSpec:
    body: dict[str, Any] = {"model": {"name": "m"}, "dataset": {"file_id": "file_1"}}
    for key, value in overrides.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    return BatchInferenceSpec.model_validate(body)


def npz(**arrays: tuple[str, list[int]]) -> dict[str, Any]:
    return {"arrays": {name: {"dtype": dtype, "shape": shape} for name, (dtype, shape) in arrays.items()}}


def refused(signature, fmt, details, batch_spec) -> PlanError:
    with pytest.raises(PlanError) as caught:
        plan_inputs(signature, fmt, details, batch_spec)
    return caught.value


def test_npz_arrays_feed_inputs_by_name_by_mapping_or_as_x():
    plan = plan_inputs(PAIR, "npz", npz(ids=("int64", [10, 32]), mask=("int32", [10, 32])), spec())
    assert [(f.input, f.array, f.dtype) for f in plan.feeds] == [("ids", "ids", "int64"), ("mask", "mask", "int64")]
    assert plan.rows == 10 and plan.outputs == ("total",)
    mapped = plan_inputs(
        PAIR,
        "npz",
        npz(input_ids=("int64", [5, 8]), attention_mask=("int64", [5, 8])),
        spec(dataset={"inputs": {"ids": "input_ids", "mask": "attention_mask"}}),
    )
    assert [f.array for f in mapped.feeds] == ["input_ids", "attention_mask"]
    training_file = plan_inputs(LINEAR, "npz", npz(X=("float64", [7, 4]), y=("int64", [7])), spec())
    assert training_file.feeds[0].array == "X" and training_file.rows == 7


def test_tables_feed_one_input_from_every_column_but_the_label_or_the_named_ones():
    details = {"columns": [{"name": n, "type": "double"} for n in ("a", "b", "c", "d", "label")], "rows": 9}
    plan = plan_inputs(LINEAR, "parquet", details, spec())
    assert plan.feeds[0].columns == ("a", "b", "c", "d") and plan.rows == 9
    picked = plan_inputs(
        LINEAR,
        "csv",
        {"columns": ["d", "c", "b", "a", "z"], "rows": 3},
        spec(dataset={"columns": ["d", "c", "b", "a"]}),
    )
    assert picked.feeds[0].columns == ("d", "c", "b", "a")


def test_a_table_row_is_reshaped_for_an_input_of_fixed_higher_rank():
    image = {"inputs": [{"name": "img", "datatype": "FP32", "shape": [-1, 1, 2, 2]}], "outputs": []}
    plan = plan_inputs(image, "csv", {"columns": ["p0", "p1", "p2", "p3"], "rows": 1}, spec())
    assert plan.feeds[0].row_shape == (1, 2, 2)
    error = refused(image, "csv", {"columns": ["p0", "p1", "p2"], "rows": 1}, spec())
    assert error.pointer == "/dataset/columns" and "[batch, 1, 2, 2]" in error.detail


def test_only_named_outputs_are_written_and_unknown_ones_are_refused():
    details = npz(x=("float32", [2, 4]))
    assert plan_inputs(LINEAR, "npz", details, spec(output={"outputs": ["label"]})).outputs == ("label",)
    error = refused(LINEAR, "npz", details, spec(output={"outputs": ["label", "probs"]}))
    assert error.pointer == "/output/outputs/1" and "'probs'" in error.detail and "'scores'" in error.detail


@pytest.mark.parametrize(
    ("signature", "fmt", "details", "overrides", "pointer", "words"),
    [
        (PAIR, "npz", npz(ids=("int64", [3, 4])), {}, "/dataset/inputs", "nothing feeds model input 'mask'"),
        (PAIR, "npz", npz(ids=("int64", [3, 4]), mask=("int64", [4, 4])), {}, "/dataset/file_id", "row counts"),
        (PAIR, "npz", npz(ids=("float32", [3, 4]), mask=("int64", [3, 4])), {}, "/dataset/file_id", "float32"),
        (PAIR, "npz", npz(ids=("int64", [3, 4]), mask=("int64", [3])), {}, "/dataset/file_id", "shape [3]"),
        (LINEAR, "npz", npz(x=("float32", [3, 5])), {}, "/dataset/file_id", "[batch, 4]"),
        (LINEAR, "npz", npz(x=("<U3", [3, 4])), {}, "/dataset/file_id", "<U3"),
        (LINEAR, "npz", npz(x=("float32", [])), {}, "/dataset/file_id", "scalar"),
        (
            LINEAR,
            "npz",
            npz(x=("float32", [3, 4])),
            {"dataset": {"inputs": {"y": "x"}}},
            "/dataset/inputs/y",
            "no input",
        ),
        (
            LINEAR,
            "npz",
            npz(x=("float32", [3, 4])),
            {"dataset": {"inputs": {"x": "z"}}},
            "/dataset/inputs/x",
            "no array",
        ),
        (LINEAR, "npz", npz(x=("float32", [3, 4])), {"dataset": {"columns": ["a"]}}, "/dataset/columns", ".npz"),
        (PAIR, "csv", {"columns": ["a"], "rows": 1}, {}, "/dataset/file_id", "give a .npz"),
        (LINEAR, "csv", {"columns": ["a", "b"], "rows": 1}, {}, "/dataset/columns", "2 columns"),
        (LINEAR, "csv", {"columns": ["label"], "rows": 1}, {}, "/dataset/columns", "besides the label"),
        (
            LINEAR,
            "csv",
            {"columns": ["a"], "rows": 1},
            {"dataset": {"columns": ["a", "q"]}},
            "/dataset/columns/1",
            "'q'",
        ),
        (
            LINEAR,
            "csv",
            {"columns": ["a"], "rows": 1},
            {"dataset": {"inputs": {"x": "a"}}},
            "/dataset/inputs",
            "columns",
        ),
        (
            LINEAR,
            "parquet",
            {"columns": [{"name": n, "type": "double" if n != "c" else "string"} for n in "abcd"], "rows": 1},
            {},
            "/dataset/columns",
            "column 'c' holds string",
        ),
        (
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4]}], "outputs": []},
            "npz",
            npz(x=("float32", [1, 4])),
            {},
            "/model",
            "no free first dimension",
        ),
    ],
)
def test_files_that_do_not_fit_the_model_are_refused_naming_the_field(
    signature, fmt, details, overrides, pointer, words
):
    error = refused(signature, fmt, details, spec(**overrides))
    assert error.pointer == pointer
    assert words in error.detail


def test_casts_that_would_lose_meaning_are_refused():
    assert castable("int32", "float32") and castable("bool", "float32") and castable("uint8", "int64")
    assert not castable("float64", "int64") and not castable("int64", "uint8") and not castable("<U2", "float32")
    assert castable("<U2", "object") and not castable("float32", "object")


def test_chunks_cover_every_row_once_in_order():
    assert chunk_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert chunk_bounds(8, 4) == [(0, 4), (4, 8)]
    assert chunk_bounds(0, 4) == []
