"""The training spec: defaults, every rejection pointing at its field, and the checks
against platform limits and stored dataset details."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from pydantic import ValidationError

from training.spec import (
    CNNSpec,
    MLPSpec,
    TrainingSpec,
    TransformerSpec,
    check_dataset_fits,
    check_limits,
    image_side,
    split_sizes,
    stageable_layers,
)

BASE: dict[str, Any] = {"model": {"arch": "mlp"}, "dataset": {"builtin": "digits"}}


def spec_with(**parts: Any) -> dict[str, Any]:
    return {**BASE, **parts}


def pointers(data: dict[str, Any]) -> set[str]:
    """The JSON pointers the API would answer for ``data`` (as api.endpoints builds them)."""
    with pytest.raises(ValidationError) as info:
        TrainingSpec.model_validate(data)
    return {"".join(f"/{part}" for part in e["loc"]) for e in info.value.errors()}


def test_a_minimal_spec_gets_defaults_and_survives_a_json_round_trip() -> None:
    spec = TrainingSpec.model_validate(BASE)
    assert spec.validation.fraction == 0.1
    assert spec.strategy.kind == "ddp" and spec.strategy.world_size == 1
    assert spec.hyperparameters.optimizer == "adam"
    dumped = spec.model_dump(mode="json")
    assert TrainingSpec.model_validate(json.loads(json.dumps(dumped))) == spec


def test_pipeline_defaults_are_filled_in_for_the_worker() -> None:
    spec = TrainingSpec.model_validate(
        spec_with(model={"arch": "mlp", "hidden": [8, 8]}, strategy={"kind": "pipeline", "nproc_per_node": 2})
    )
    assert spec.strategy.pipeline_stages == 2
    assert spec.strategy.microbatches == 4
    assert spec.model_dump()["strategy"]["pipeline_stages"] == 2


def test_hybrid_splits_the_world_into_replicas_of_a_pipeline() -> None:
    spec = TrainingSpec.model_validate(
        spec_with(
            model={"arch": "mlp", "hidden": [8, 8]},
            strategy={"kind": "hybrid", "nproc_per_node": 2, "nnodes": 2, "pipeline_stages": 2, "microbatches": 2},
            hyperparameters={"batch_size": 32},
        )
    )
    assert spec.strategy.data_parallel_size == 2


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (spec_with(model={"arch": "mlp", "hidden": [0]}), "/model/hidden/0"),
        (spec_with(model={"arch": "mlp", "hidden": []}), "/model/hidden"),
        (spec_with(model={"arch": "mlp", "dropout": 1.5}), "/model/dropout"),
        (spec_with(model={"arch": "mlp", "width": 3}), "/model/width"),
        (spec_with(model={"arch": "rnn"}), "/model/arch"),
        (spec_with(model={"arch": "cnn", "kernel_size": 4}), "/model/kernel_size"),
        (spec_with(model={"arch": "cnn", "channels": [8] * 7}), "/model/channels"),
        (spec_with(model={"arch": "transformer", "d_model": 30, "heads": 4}), "/model/heads"),
        (spec_with(dataset={"builtin": "digits", "file_id": "file_abc"}), "/dataset"),
        (spec_with(dataset={}), "/dataset"),
        (spec_with(dataset={"file_id": "abc"}), "/dataset/file_id"),
        (spec_with(dataset={"builtin": "mnist"}), "/dataset/builtin"),
        (spec_with(dataset={"builtin": "digits", "label_column": "y"}), "/dataset/label_column"),
        (spec_with(validation={"fraction": 0.7}), "/validation/fraction"),
        (spec_with(validation={"fraction": 0}), "/validation/fraction"),
        (spec_with(validation={"fraction": 0.1, "file_id": "file_abc"}), "/validation"),
        (spec_with(strategy={"kind": "tensor"}), "/strategy/kind"),
        (spec_with(strategy={"nproc_per_node": 0}), "/strategy/nproc_per_node"),
        (spec_with(strategy={"nnodes": 1000}), "/strategy/nnodes"),
        (spec_with(strategy={"schedule": "zb"}), "/strategy/schedule"),
        (spec_with(strategy={"kind": "ddp", "microbatches": 4}), "/strategy/microbatches"),
        (spec_with(strategy={"kind": "fsdp", "pipeline_stages": 2}), "/strategy/pipeline_stages"),
        (
            spec_with(strategy={"kind": "ddp", "nproc_per_node": 3}, hyperparameters={"batch_size": 32}),
            "/hyperparameters/batch_size",
        ),
        # an mlp with one hidden layer has 2 blocks: too few for 3 stages
        (spec_with(strategy={"kind": "pipeline", "nproc_per_node": 3}), "/strategy/pipeline_stages"),
        (
            spec_with(
                model={"arch": "mlp", "hidden": [8, 8, 8]},
                strategy={"kind": "pipeline", "nproc_per_node": 4, "pipeline_stages": 2},
            ),
            "/strategy/pipeline_stages",
        ),
        (spec_with(strategy={"kind": "hybrid", "nproc_per_node": 4}), "/strategy/pipeline_stages"),
        (
            spec_with(
                model={"arch": "mlp", "hidden": [8, 8]},
                strategy={"kind": "hybrid", "nproc_per_node": 3, "pipeline_stages": 2},
            ),
            "/strategy/pipeline_stages",
        ),
        (
            spec_with(strategy={"kind": "pipeline", "nproc_per_node": 2, "microbatches": 1, "schedule": "1f1b"}),
            "/strategy/microbatches",
        ),
        (
            spec_with(
                strategy={"kind": "pipeline", "nproc_per_node": 2, "microbatches": 3},
                hyperparameters={"batch_size": 32},
            ),
            "/hyperparameters/batch_size",
        ),
        (
            spec_with(
                model={"arch": "mlp", "hidden": [8, 8]},
                strategy={"kind": "hybrid", "nproc_per_node": 4, "pipeline_stages": 2, "microbatches": 4},
                hyperparameters={"batch_size": 12},
            ),
            "/hyperparameters/batch_size",
        ),
        (spec_with(hyperparameters={"lr": 0}), "/hyperparameters/lr"),
        (spec_with(hyperparameters={"epochs": 0}), "/hyperparameters/epochs"),
        (spec_with(hyperparameters={"optimizer": "rmsprop"}), "/hyperparameters/optimizer"),
        (spec_with(hyperparameters={"optimizer": "adam", "momentum": 0.9}), "/hyperparameters/momentum"),
        (spec_with(hyperparameters={"seed": -1}), "/hyperparameters/seed"),
        (spec_with(checkpoint_every_steps=0), "/checkpoint_every_steps"),
        (spec_with(register_as="Digits_CNN"), "/register_as"),
        (spec_with(register_as="-digits"), "/register_as"),
        (spec_with(callbacks=["x"]), "/callbacks"),
    ],
)
def test_a_bad_field_is_reported_at_its_pointer(data: dict[str, Any], expected: str) -> None:
    assert pointers(data) == {expected}


def test_several_bad_fields_are_reported_together() -> None:
    found = pointers(spec_with(model={"arch": "mlp", "hidden": [0]}, hyperparameters={"lr": -1}))
    assert found == {"/model/hidden/0", "/hyperparameters/lr"}


def test_messages_name_the_numbers_involved() -> None:
    with pytest.raises(ValidationError) as info:
        TrainingSpec.model_validate(spec_with(strategy={"nproc_per_node": 3}, hyperparameters={"batch_size": 32}))
    assert "32" in str(info.value) and "3" in str(info.value)


@pytest.mark.parametrize(
    ("model", "blocks"),
    [
        (MLPSpec(arch="mlp", hidden=[8, 8]), 3),
        (CNNSpec(arch="cnn", channels=[4, 8, 16]), 4),
        (TransformerSpec(arch="transformer", layers=3), 5),
    ],
)
def test_stageable_layers_counts_top_level_blocks(model: Any, blocks: int) -> None:
    assert stageable_layers(model) == blocks


def test_image_side_accepts_square_single_channel_shapes_only() -> None:
    assert image_side((64,)) == 8
    assert image_side((8, 8)) == 8
    assert image_side((1, 8, 8)) == 8
    assert image_side((63,)) is None
    assert image_side((4, 8)) is None
    assert image_side((3, 8, 8)) is None


def test_split_sizes_keep_at_least_one_validation_row() -> None:
    assert split_sizes(100, 0.1) == (90, 10)
    assert split_sizes(3, 0.1) == (2, 1)


def test_the_spec_module_does_not_import_torch() -> None:
    code = "import sys, training.spec; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_the_json_schema_can_be_generated_for_the_openapi_document() -> None:
    schema = TrainingSpec.model_json_schema()
    assert "model" in schema["properties"]


# --- check_limits ------------------------------------------------------------------------------


def test_check_limits_points_at_the_excess() -> None:
    spec = TrainingSpec.model_validate(spec_with(strategy={"nproc_per_node": 8, "nnodes": 2}))
    problems = check_limits(spec, max_nproc_per_node=4, max_nnodes=1)
    assert [p["pointer"] for p in problems] == ["/strategy/nproc_per_node", "/strategy/nnodes"]
    assert check_limits(spec, max_nproc_per_node=8, max_nnodes=2) == []


# --- check_dataset_fits ------------------------------------------------------------------------


def npz(x_shape: list[int], y_shape: list[int] | None = None, x_dtype: str = "float32") -> dict[str, Any]:
    arrays = {"X": {"dtype": x_dtype, "shape": x_shape}}
    if y_shape is not None:
        arrays["y"] = {"dtype": "int64", "shape": y_shape}
    return {"arrays": arrays}


def file_spec(model: dict[str, Any] | None = None, label_column: str | None = None, **extra: Any) -> TrainingSpec:
    dataset: dict[str, Any] = {"file_id": "file_01abc"}
    if label_column:
        dataset["label_column"] = label_column
    return TrainingSpec.model_validate({"model": model or {"arch": "mlp"}, "dataset": dataset, **extra})


def fits(spec: TrainingSpec, details: dict[str, Any], validation: dict[str, Any] | None = None) -> list[str]:
    return [p["pointer"] for p in check_dataset_fits(spec, details, validation)]


def test_a_fitting_npz_has_no_problems() -> None:
    assert fits(file_spec({"arch": "cnn"}), npz([500, 8, 8], [500])) == []
    assert fits(file_spec({"arch": "cnn"}), npz([500, 64], [500, 1])) == []


@pytest.mark.parametrize(
    ("details", "model", "expected"),
    [
        (npz([500, 64]), {"arch": "mlp"}, "/dataset"),  # no y
        (npz([500], [500]), {"arch": "mlp"}, "/dataset"),  # X has no feature axis
        (npz([500, 64], [400]), {"arch": "mlp"}, "/dataset"),  # row counts differ
        (npz([500, 64], [500, 2]), {"arch": "mlp"}, "/dataset"),  # two labels per row
        (npz([500, 64], [500], x_dtype="<U3"), {"arch": "mlp"}, "/dataset"),  # strings
        (npz([500, 10], [500]), {"arch": "cnn"}, "/model/arch"),  # 10 is not a square
        (npz([500, 4, 8], [500]), {"arch": "cnn"}, "/model/arch"),  # not a square image
        (npz([500, 2000], [500]), {"arch": "transformer"}, "/model/arch"),  # too many tokens
        ({"something": 1}, {"arch": "mlp"}, "/dataset"),
    ],
)
def test_npz_problems_are_pointed_at(details: dict[str, Any], model: dict[str, Any], expected: str) -> None:
    assert fits(file_spec(model), details) == [expected]


def test_an_npz_takes_no_label_column() -> None:
    assert fits(file_spec(label_column="y"), npz([500, 64], [500])) == ["/dataset/label_column"]


def test_csv_needs_its_label_column() -> None:
    csv = {"columns": ["a", "b", "label"], "rows": 100}
    assert fits(file_spec(), csv) == []
    assert fits(file_spec(label_column="target"), csv) == ["/dataset/label_column"]
    assert fits(file_spec(), {"columns": ["a", "b", "target"], "rows": 100}) == ["/dataset"]
    assert fits(file_spec(), {"columns": ["label"], "rows": 100}) == ["/dataset"]


def test_parquet_features_must_be_numeric() -> None:
    columns = [{"name": "a", "type": "double"}, {"name": "b", "type": "int64"}, {"name": "label", "type": "string"}]
    assert fits(file_spec(), {"columns": columns, "rows": 100}) == []
    columns[0]["type"] = "string"
    assert fits(file_spec(), {"columns": columns, "rows": 100}) == ["/dataset"]


def test_a_cnn_needs_a_square_number_of_csv_features() -> None:
    assert fits(file_spec({"arch": "cnn"}), {"columns": [*map(str, range(16)), "label"], "rows": 100}) == []
    assert fits(file_spec({"arch": "cnn"}), {"columns": [*map(str, range(15)), "label"], "rows": 100}) == [
        "/model/arch"
    ]


def test_the_batch_must_fit_in_the_training_rows() -> None:
    spec = file_spec(hyperparameters={"batch_size": 64})
    assert fits(spec, npz([60, 4], [60])) == ["/hyperparameters/batch_size"]


def test_a_validation_file_must_have_the_same_features() -> None:
    spec = file_spec(validation={"file_id": "file_02val"})
    assert fits(spec, npz([500, 64], [500]), npz([50, 64], [50])) == []
    assert fits(spec, npz([500, 64], [500]), npz([50, 32], [50])) == ["/validation/file_id"]
    assert fits(spec, npz([500, 64], [500]), npz([50, 64])) == ["/validation"]


def test_a_builtin_dataset_is_checked_against_its_known_shape() -> None:
    digits = {"model": {"arch": "cnn"}, "dataset": {"builtin": "digits"}}
    assert check_dataset_fits(TrainingSpec.model_validate(digits), None) == []
    too_big = {**digits, "hyperparameters": {"batch_size": 2048}}
    assert fits(TrainingSpec.model_validate(too_big), {}) == ["/hyperparameters/batch_size"]
