"""The compression spec: JSON pointers of every refusal, the checks against the source's facts
and the data files' details, and the zoo arithmetic they rest on."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from compression.prune import prune_structured, remaining_after
from compression.spec import (
    CNNSpec,
    CompressionSpec,
    DataSpec,
    MLPSpec,
    SourceFacts,
    TransformerSpec,
    after_structured_prune,
    check_against_source,
    check_data_fits,
    describe_rows,
    remaining_channels,
    signature_task,
    state_dict_classes,
    task_of_output,
    zoo_parameters,
)
from core.spec_kit import json_pointer
from training.zoo import build_model

TEACHER = {"arch": "cnn", "channels": [64, 128]}


def spec(**overrides: Any) -> dict[str, Any]:
    return {
        "source": {"model": "digits-cnn", "version": 1},
        "passes": [{"kind": "prune", "amount": 0.5}],
        "eval": {"builtin": "digits"},
        **overrides,
    }


def pointers(body: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        CompressionSpec.model_validate(body)
    return [json_pointer(e["loc"]) for e in caught.value.errors()]


def facts(zoo: Any = None, *, features: int | None = 64, classes: int | None = 10, **more: Any) -> SourceFacts:
    return SourceFacts(describe="the source", zoo=zoo, features=features, classes=classes, **more)


# --- the schema --------------------------------------------------------------------------------


def test_a_full_spec_parses_with_defaults() -> None:
    parsed = CompressionSpec.model_validate(
        spec(
            passes=[
                {"kind": "prune", "amount": 0.8, "scope": "global", "fine_tune_epochs": 2},
                {"kind": "distill", "student": {"arch": "cnn", "channels": [16, 32]}},
                {"kind": "quantize", "mode": "static", "calibration": {"builtin": "digits", "rows": 64}},
            ],
            register_as="digits-cnn-int8",
        )
    )
    assert [p.kind for p in parsed.passes] == ["prune", "distill", "quantize"]
    assert parsed.passes[1].student == CNNSpec(arch="cnn", channels=[16, 32])
    assert parsed.passes[2].needs_calibration and parsed.passes[2].effective_calibration.rows == 64
    assert parsed.accuracy_floor.accuracy_floor(0.98) == pytest.approx(0.93)
    assert parsed.measurement.throughput_batch == 32


@pytest.mark.parametrize("amount", [0, 1, 1.5, -0.1])
def test_an_amount_outside_zero_one_points_at_the_amount(amount: float) -> None:
    assert pointers(spec(passes=[{"kind": "prune", "amount": amount}])) == ["/passes/0/amount"]


@pytest.mark.parametrize(
    ("passes", "pointer"),
    [
        ([{"kind": "shrink"}], "/passes/0/kind"),
        ([{"amount": 0.5}], "/passes/0/kind"),
        ([{"kind": "prune", "amount": 0.5, "structured": True, "scope": "global"}], "/passes/0/scope"),
        ([{"kind": "prune", "amount": 0.5, "fine_tune_epochs": -1}], "/passes/0/fine_tune_epochs"),
        ([{"kind": "prune", "amount": 0.5, "shape": "round"}], "/passes/0/shape"),
        ([{"kind": "distill", "student": {"arch": "resnet"}}], "/passes/0/student/arch"),
        ([{"kind": "distill", "student": {"arch": "cnn", "channels": [0]}}], "/passes/0/student/channels/0"),
        ([{"kind": "distill", "student": {"arch": "mlp"}, "alpha": 2}], "/passes/0/alpha"),
        ([{"kind": "quantize", "mode": "int4"}], "/passes/0/mode"),
        ([{"kind": "quantize", "mode": "fp16", "calibration": {}}], "/passes/0/calibration"),
        ([{"kind": "quantize", "mode": "dynamic", "exclude_op_types": ["Softmax"]}], "/passes/0/exclude_op_types"),
        ([{"kind": "quantize", "mode": "static", "calibration": {"rows": 0}}], "/passes/0/calibration/rows"),
        (
            [{"kind": "quantize", "mode": "dynamic", "protect": {}, "exclude_nodes": ["fc1"]}],
            "/passes/0/protect",
        ),
        ([{"kind": "quantize", "mode": "dynamic"}, {"kind": "prune", "amount": 0.5}], "/passes/1/kind"),
        ([{"kind": "quantize", "mode": "dynamic"}, {"kind": "quantize", "mode": "fp16"}], "/passes/1/kind"),
        ([], "/passes"),
    ],
)
def test_bad_passes_point_at_the_field(passes: list[dict[str, Any]], pointer: str) -> None:
    assert pointer in pointers(spec(passes=passes))


@pytest.mark.parametrize(
    ("overrides", "pointer"),
    [
        ({"source": {"model": "m", "file_id": "file_abc"}}, "/source"),
        ({"source": {"file_id": "file_abc", "version": 2}}, "/source/version"),
        ({"source": {"model": "m", "arch": {"arch": "mlp"}}}, "/source/arch"),
        ({"source": {"file_id": "file_abc", "arch": {"arch": "rnn"}}}, "/source/arch"),
        ({"source": {"model": "Bad Name"}}, "/source/model"),
        ({"eval": {"builtin": "digits", "fraction": 0.9}}, "/eval/fraction"),
        ({"eval": {"file_id": "file_abc", "builtin": "digits"}}, "/eval"),
        ({"accuracy_floor": {"max_drop": -1}}, "/accuracy_floor/max_drop"),
        ({"register_as": "Not OK"}, "/register_as"),
    ],
)
def test_bad_sources_and_options_point_at_the_field(overrides: dict[str, Any], pointer: str) -> None:
    assert pointer in pointers(spec(**overrides))


def test_the_eval_data_is_required() -> None:
    body = spec()
    del body["eval"]
    assert pointers(body) == ["/eval"]


def test_the_spec_module_does_not_import_torch() -> None:
    code = "import sys, compression.spec; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


# --- zoo arithmetic ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zoo", "features"),
    [
        (MLPSpec(arch="mlp", hidden=[32, 16]), 64),
        (CNNSpec(arch="cnn", channels=[64, 128]), 64),
        (CNNSpec(arch="cnn", channels=[8, 8, 8], kernel_size=5), 144),
        (CNNSpec(arch="cnn", channels=[4]), 9),
        (TransformerSpec(arch="transformer", d_model=16, heads=2, layers=2, ff_dim=24), 12),
    ],
)
def test_parameters_counted_from_the_spec_match_the_built_model(zoo: Any, features: int) -> None:
    model = build_model(zoo, features, 7)
    assert zoo_parameters(zoo, features, 7) == sum(p.numel() for p in model.parameters())
    shapes = {name: {"shape": list(t.shape)} for name, t in model.state_dict().items()}
    assert state_dict_classes(shapes) == 7


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 127])
@pytest.mark.parametrize("amount", [0.1, 0.25, 0.5, 0.75, 0.99])
def test_channels_left_match_the_pruner(size: int, amount: float) -> None:
    assert remaining_channels(size, amount) == remaining_after(size, amount)


def test_the_spec_after_structured_pruning_matches_the_pruned_model() -> None:
    zoo = CNNSpec(arch="cnn", channels=[64, 128])
    pruned = prune_structured(build_model(zoo, 64, 10), 0.5)
    resized = after_structured_prune(zoo, 0.5)
    assert resized.channels == [32, 64]
    assert zoo_parameters(resized, 64, 10) == sum(p.numel() for p in pruned.parameters())


def test_state_dict_classes_needs_numbered_blocks() -> None:
    assert state_dict_classes({"weight": {"shape": [3, 4]}}) is None
    assert state_dict_classes({}) is None
    assert state_dict_classes({"0.weight": {"shape": [5, 4]}, "0.bias": {"shape": [5]}}) == 5
    assert state_dict_classes({"1.1.weight": {"shape": [10, 512]}, "0.0.weight": {"shape": [64, 1, 3, 3]}}) == 10


# --- against the source ------------------------------------------------------------------------


def parsed(**overrides: Any) -> CompressionSpec:
    return CompressionSpec.model_validate(spec(**{"dataset": {"builtin": "digits"}, **overrides}))


@pytest.mark.parametrize("kind", ["prune", "distill"])
def test_pruning_or_distilling_an_onnx_graph_points_at_the_pass(kind: str) -> None:
    item = {"kind": "prune", "amount": 0.5} if kind == "prune" else {"kind": "distill", "student": {"arch": "mlp"}}
    problems = check_against_source(parsed(passes=[item]), facts(None))
    assert [p["pointer"] for p in problems] == ["/passes/0/kind"]
    assert "ONNX graph only" in problems[0]["detail"]


def test_quantizing_an_onnx_graph_applies() -> None:
    assert check_against_source(parsed(passes=[{"kind": "quantize", "mode": "dynamic"}]), facts(None)) == []


def test_a_student_not_smaller_than_its_teacher_is_refused() -> None:
    teacher = CNNSpec(arch="cnn", channels=[16, 32])
    student = {"kind": "distill", "student": {"arch": "cnn", "channels": [32, 64]}}
    problems = check_against_source(parsed(passes=[student]), facts(teacher))
    assert [p["pointer"] for p in problems] == ["/passes/0/student"]
    assert "it must have fewer" in problems[0]["detail"]


def test_the_teacher_of_a_later_distillation_is_the_pruned_model() -> None:
    student = {"kind": "distill", "student": {"arch": "cnn", "channels": [40, 80]}}
    teacher = CNNSpec(arch="cnn", channels=[64, 128])
    assert check_against_source(parsed(passes=[student]), facts(teacher)) == []
    shrink = {"kind": "prune", "amount": 0.5, "structured": True}
    problems = check_against_source(parsed(passes=[shrink, student]), facts(teacher))
    assert [p["pointer"] for p in problems] == ["/passes/1/student"]


def test_a_student_that_cannot_read_the_features_is_refused() -> None:
    student = {"kind": "distill", "student": {"arch": "cnn", "channels": [4]}}
    problems = check_against_source(parsed(passes=[student]), facts(MLPSpec(arch="mlp", hidden=[256]), features=10))
    assert [p["pointer"] for p in problems] == ["/passes/0/student/arch"]


def test_structured_pruning_of_a_transformer_points_at_structured() -> None:
    zoo = TransformerSpec(arch="transformer")
    problems = check_against_source(parsed(passes=[{"kind": "prune", "amount": 0.5, "structured": True}]), facts(zoo))
    assert [p["pointer"] for p in problems] == ["/passes/0/structured"]


def test_fine_tuning_needs_a_dataset_unless_the_source_has_one() -> None:
    body = spec(passes=[{"kind": "prune", "amount": 0.5, "fine_tune_epochs": 1}])
    no_data = CompressionSpec.model_validate(body)
    zoo = MLPSpec(arch="mlp")
    assert [p["pointer"] for p in check_against_source(no_data, facts(zoo))] == ["/dataset"]
    known = facts(zoo, default_dataset=DataSpec(builtin="digits"))
    assert check_against_source(no_data, known) == []
    no_tuning = CompressionSpec.model_validate(spec(passes=[{"kind": "prune", "amount": 0.5, "fine_tune_epochs": 0}]))
    assert check_against_source(no_tuning, facts(zoo)) == []


# --- regression models ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("datatype", "shape", "task"),
    [
        ("FP32", [-1], "regression"),  # a text encoder's regression head: value [batch]
        ("FP32", [-1, 1], "regression"),
        ("FP16", [8, 1], "regression"),
        ("FP32", [-1, 3], "classification"),  # class scores
        ("INT64", [-1], "classification"),  # predicted labels
        ("BYTES", [-1], "classification"),
        ("FP32", [-1, 1, 1], "classification"),
        ("FP32", None, "classification"),  # rank unknown
    ],
)
def test_a_model_is_a_regression_model_when_its_first_output_is_one_float_per_row(
    datatype: str, shape: list[int] | None, task: str
) -> None:
    assert task_of_output(datatype, shape) == task


def test_the_task_is_the_first_outputs() -> None:
    value = {"name": "value", "datatype": "FP32", "shape": [-1]}
    label = {"name": "label", "datatype": "BYTES", "shape": [-1]}
    assert signature_task({"inputs": [], "outputs": [value, label]}) == "regression"
    assert signature_task({"inputs": [], "outputs": [label, value]}) == "classification"
    assert signature_task({}) == "classification"


def regression(zoo: Any = None) -> SourceFacts:
    return facts(zoo, features=None, classes=None, task="regression")


QUANTIZE = [{"kind": "quantize", "mode": "dynamic"}]


@pytest.mark.parametrize("field", ["max_drop", "min_accuracy"])
def test_an_accuracy_floor_for_a_regression_model_points_at_the_field(field: str) -> None:
    problems = check_against_source(parsed(passes=QUANTIZE, accuracy_floor={field: 0.1}), regression())
    assert [p["pointer"] for p in problems] == [f"/accuracy_floor/{field}"]
    assert "regression model" in problems[0]["detail"] and "max_mae_increase" in problems[0]["detail"]


def test_a_regression_model_takes_the_default_floor_and_its_own_fields() -> None:
    assert check_against_source(parsed(passes=QUANTIZE), regression()) == []
    floor = {"max_mae_increase": 0.2, "min_mean_cosine": 0.9, "max_drop": None}  # a null turns a part off
    assert check_against_source(parsed(passes=QUANTIZE, accuracy_floor=floor), regression()) == []


def test_an_error_ceiling_for_a_classifier_points_at_the_field() -> None:
    body = parsed(passes=QUANTIZE, accuracy_floor={"max_mae_increase": 0.2})
    problems = check_against_source(body, facts(None))
    assert [p["pointer"] for p in problems] == ["/accuracy_floor/max_mae_increase"]
    assert "classifier" in problems[0]["detail"]
    assert check_against_source(parsed(passes=QUANTIZE, accuracy_floor={"max_mae_increase": None}), facts(None)) == []


def test_the_error_ceiling_is_relative_to_the_sources_mae() -> None:
    floor = CompressionSpec.model_validate(spec()).accuracy_floor
    assert floor.max_mae_increase == 0.1 and floor.mae_ceiling(0.5) == pytest.approx(0.55)
    assert pointers(spec(accuracy_floor={"max_mae_increase": -0.1})) == ["/accuracy_floor/max_mae_increase"]


def test_passes_that_train_a_regression_model_as_a_classifier_point_at_their_option() -> None:
    zoo = MLPSpec(arch="mlp", hidden=[32])
    tune = {"kind": "prune", "amount": 0.5, "fine_tune_epochs": 1}
    kd = {"kind": "distill", "student": {"arch": "mlp", "hidden": [8]}}
    cosine = {**kd, "mode": "cosine"}
    problems = check_against_source(parsed(passes=[tune, kd, cosine]), regression(zoo))
    assert [p["pointer"] for p in problems] == ["/passes/0/fine_tune_epochs", "/passes/1/mode", "/passes/2/mode"]
    assert "regression model" in problems[1]["detail"] and "use mse" in problems[1]["detail"]
    untrained = {"kind": "prune", "amount": 0.5, "fine_tune_epochs": 0}
    assert check_against_source(parsed(passes=[untrained]), regression(zoo)) == []


# --- against the data files --------------------------------------------------------------------


def npz(shape: list[int], labels: bool = True) -> dict[str, Any]:
    arrays = {"X": {"dtype": "float32", "shape": shape}}
    if labels:
        arrays["y"] = {"dtype": "int64", "shape": shape[:1]}
    return {"arrays": arrays}


def test_data_files_that_fit_pass() -> None:
    body = parsed(
        eval={"file_id": "file_eval"},
        dataset={"file_id": "file_train"},
        passes=[{"kind": "quantize", "mode": "static", "calibration": {"file_id": "file_cal"}}],
    )
    details = {
        "/eval": npz([50, 8, 8], labels=False),
        "/dataset": npz([100, 64]),
        "/passes/0/calibration": npz([9, 64]),
    }
    assert check_data_fits(body, facts(MLPSpec(arch="mlp")), details) == []


def test_calibration_rows_of_the_wrong_width_point_at_the_calibration_file() -> None:
    body = parsed(
        passes=[
            {"kind": "prune", "amount": 0.5},
            {"kind": "quantize", "mode": "static", "calibration": {"file_id": "file_cal"}},
        ]
    )
    problems = check_data_fits(body, facts(MLPSpec(arch="mlp")), {"/passes/1/calibration": npz([32, 10])})
    assert [p["pointer"] for p in problems] == ["/passes/1/calibration/file_id"]
    assert "10 values each" in problems[0]["detail"] and "takes 64" in problems[0]["detail"]


def test_eval_rows_are_checked_against_an_onnx_input_shape() -> None:
    graph = facts(None, features=None, inputs=[{"name": "x", "shape": [-1, 1, 12, 12], "datatype": "FP32"}])
    body = CompressionSpec.model_validate(
        spec(eval={"file_id": "file_eval"}, passes=[{"kind": "quantize", "mode": "dynamic"}])
    )
    assert check_data_fits(body, graph, {"/eval": npz([5, 144])}) == []
    assert [p["pointer"] for p in check_data_fits(body, graph, {"/eval": npz([5, 64])})] == ["/eval/file_id"]
    encoder = facts(None, features=None, inputs=[{"name": "ids", "shape": [-1, -1]}, {"name": "mask", "shape": None}])
    # two inputs are fed array by array (tests/unit/compression/test_named_inputs.py): X feeds neither
    assert [p["pointer"] for p in check_data_fits(body, encoder, {"/eval": npz([5, 64])})] == ["/eval/inputs"]


def test_a_dataset_without_labels_cannot_fine_tune() -> None:
    body = parsed(dataset={"file_id": "file_train"})
    problems = check_data_fits(body, facts(MLPSpec(arch="mlp")), {"/dataset": npz([100, 64], labels=False)})
    assert [p["pointer"] for p in problems] == ["/dataset/file_id"]


def test_rows_are_described_from_upload_details() -> None:
    assert describe_rows(npz([10, 8, 8]), None) == (10, 64, True)
    assert describe_rows({"columns": ["a", "b", "label"], "rows": 4}, None) == (4, 2, True)
    assert describe_rows({"columns": [{"name": "a"}, {"name": "b"}], "rows": 4}, None) == (4, 2, False)
    assert describe_rows({"columns": ["a", "b", "cls"], "rows": 4}, "cls") == (4, 2, True)
    with pytest.raises(ValueError, match="no column 'cls'"):
        describe_rows({"columns": ["a"], "rows": 4}, "cls")
    with pytest.raises(ValueError, match="array X"):
        describe_rows({"arrays": {"y": {"shape": [3]}}}, None)
