"""The compression run: the accuracy floor, which rows go where, and the passes end to end on a
small MLP (prune + quantize, distillation), with cancellation and failures pointing into the spec;
a regression model (one value per row) measured and held to its MAE ceiling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from compression import pipeline
from compression.data import DataError, PipelineData, Rows, assemble, class_indices, read_rows, spread
from compression.fidelity import Fidelity, RegressionErrors
from compression.finetune import finetune
from compression.measure import onnx_outputs
from compression.passes import ModelState
from compression.sources import SourceError, source_state, zoo_model
from compression.spec import AccuracyFloor, CompressionSpec, DataSpec, MLPSpec
from tests.support import compression_models as models
from training.export import save_state_dict
from training.zoo import build_model

FAST = {"latency_iterations": 5, "throughput_iterations": 2, "warmup": 1}


def fidelity(mean: float) -> Fidelity:
    return Fidelity(rows=10, mean_cosine=mean, min_cosine=mean, max_abs_error=0.0)


def quality(accuracy: float | None, cosine: float, mae: float | None = None) -> pipeline.Quality:
    errors = None if mae is None else RegressionErrors(rows=10, mae=mae, rmse=mae, r2=0.5)
    return pipeline.Quality(accuracy, errors, fidelity(cosine))


# --- the floor ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("floor", "accuracy", "breached"),
    [
        (AccuracyFloor(), 0.851, False),
        (AccuracyFloor(), 0.849, True),
        (AccuracyFloor(max_drop=None), 0.1, False),
        (AccuracyFloor(max_drop=None, min_accuracy=0.95), 0.94, True),
        (AccuracyFloor(max_drop=0.5, min_accuracy=0.95), 0.94, True),
        (AccuracyFloor(max_drop=0.01, min_accuracy=0.5), 0.88, True),
    ],
)
def test_the_floor_is_the_higher_of_the_relative_and_absolute_limits(
    floor: AccuracyFloor, accuracy: float, breached: bool
) -> None:
    breach = pipeline.floor_breach(floor, quality(0.9, 1.0), quality(accuracy, 0.5))
    assert (breach is not None) == breached
    if breach:
        assert breach.metric == "accuracy" and breach.value == accuracy and breach.source_value == 0.9
        assert "below the floor" in breach.message("1. prune")


def test_without_labels_the_floor_is_on_the_mean_cosine() -> None:
    floor = AccuracyFloor(min_mean_cosine=0.97)
    assert pipeline.floor_breach(floor, quality(None, 1.0), quality(None, 0.98)) is None
    breach = pipeline.floor_breach(floor, quality(None, 1.0), quality(None, 0.9))
    assert breach is not None and breach.metric == "mean_cosine" and breach.floor == 0.97
    assert pipeline.floor_breach(AccuracyFloor(min_mean_cosine=None), quality(None, 1), quality(None, 0)) is None


@pytest.mark.parametrize(
    ("floor", "mae", "breached"),
    [
        (AccuracyFloor(), 0.219, False),  # default: at most 10% more error than the source's 0.2
        (AccuracyFloor(), 0.221, True),
        (AccuracyFloor(max_mae_increase=1.0), 0.39, False),
        (AccuracyFloor(max_mae_increase=None), 5.0, False),
        (AccuracyFloor(max_mae_increase=0.0), 0.2001, True),
    ],
)
def test_a_regression_models_ceiling_is_on_its_mae(floor: AccuracyFloor, mae: float, breached: bool) -> None:
    # the mean cosine (0.5) is not what a labelled regression run is judged by
    breach = pipeline.floor_breach(floor, quality(None, 1.0, mae=0.2), quality(None, 0.5, mae=mae))
    assert (breach is not None) == breached
    if breach:
        assert (breach.metric, breach.value, breach.source_value) == ("mae", mae, 0.2)
        assert breach.floor == floor.mae_ceiling(0.2)
        assert "above the ceiling" in breach.message("1. quantize")


# --- which rows go where -----------------------------------------------------------------------


def spec_with(**overrides: Any) -> CompressionSpec:
    body = {
        "source": {"file_id": "file_src", "arch": {"arch": "mlp", "hidden": [16]}},
        "passes": [
            {"kind": "prune", "amount": 0.5},
            {"kind": "quantize", "mode": "static", "calibration": {"rows": 7}},
        ],
        "eval": {"builtin": "digits"},
        "dataset": {"builtin": "digits"},
        **overrides,
    }
    return CompressionSpec.model_validate(body)


def builtin(data: DataSpec, pointer: str) -> Rows:
    return read_rows(None, data, pointer)


def test_eval_rows_are_held_out_of_the_same_dataset() -> None:
    data = assemble(spec_with(), builtin, num_outputs=10)
    assert len(data.eval_x) == 359 and len(data.train_x) == 1797 - 359
    assert data.split == (0.2, 0) and data.dataset == DataSpec(builtin="digits")
    rows = {row.tobytes() for row in data.train_x}
    assert not any(row.tobytes() in rows for row in data.eval_x[:50])
    assert data.calibration[1].shape == (7, 64) and 0 not in data.calibration
    assert data.notes[-1] == "pass 1 calibrates on 7 rows of the training rows"


def test_the_sources_own_split_is_the_default() -> None:
    data = assemble(
        spec_with(dataset=None),
        builtin,
        num_outputs=10,
        default_dataset=DataSpec(builtin="digits"),
        default_split=(0.1, 3),
    )
    assert len(data.eval_x) == 180 and data.split == (0.1, 3)
    explicit = assemble(
        spec_with(dataset=None, eval={"builtin": "digits", "fraction": 0.3}),
        builtin,
        num_outputs=10,
        default_dataset=DataSpec(builtin="digits"),
        default_split=(0.1, 3),
    )
    assert len(explicit.eval_x) == round(1797 * 0.3)


def test_other_eval_data_is_not_split_and_can_be_capped(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((40, 64), dtype=np.float32)
    np.savez(tmp_path / "eval.npz", X=x)
    paths = {"file_eval": tmp_path / "eval.npz"}

    def load(data: DataSpec, pointer: str) -> Rows:
        return read_rows(paths.get(data.file_id or ""), data, pointer)

    data = assemble(spec_with(eval={"file_id": "file_eval", "max_rows": 30}), load, num_outputs=10)
    assert data.eval_x.shape == (30, 64) and data.eval_y is None
    assert len(data.train_x) == 1797 and data.split is None
    no_dataset = assemble(spec_with(eval={"file_id": "file_eval"}, dataset=None), load, num_outputs=10)
    assert no_dataset.train_x is None
    assert no_dataset.notes == ["pass 1 calibrates on 7 rows of the eval rows (no other data was given)"]


def test_labels_become_class_indices() -> None:
    assert class_indices(np.array([3, 1, 2]), None, 10, "/eval").tolist() == [3, 1, 2]
    assert class_indices(np.array(["b", "a", "b"]), None, 2, "/eval").tolist() == [1, 0, 1]
    assert class_indices(np.array([10, 30, 20]), None, 3, "/eval").tolist() == [0, 2, 1]
    assert class_indices(np.array(["cat", "dog"]), ["ant", "cat", "dog"], 3, "/eval").tolist() == [1, 2]
    assert spread(10, 3).tolist() == [0, 4, 9] and spread(2, 5).tolist() == [0, 1]


def test_a_regression_models_labels_stay_numbers(tmp_path: Path) -> None:
    x = np.random.default_rng(0).random((20, 64), dtype=np.float32)
    np.savez(tmp_path / "scores.npz", X=x, y=np.linspace(0.0, 2.0, 20))
    np.savez(tmp_path / "words.npz", X=x, y=np.array(["low", "high"] * 10))
    paths = {"file_scores": tmp_path / "scores.npz", "file_words": tmp_path / "words.npz"}

    def load(data: DataSpec, pointer: str) -> Rows:
        return read_rows(paths.get(data.file_id or ""), data, pointer)

    quantize = [{"kind": "quantize", "mode": "dynamic"}]
    body = spec_with(eval={"file_id": "file_scores"}, dataset=None, passes=quantize)
    data = assemble(body, load, num_outputs=2**31, task="regression")
    assert data.task == "regression" and data.eval_y is not None and data.eval_y.dtype == np.float64
    assert data.eval_y.tolist() == np.linspace(0.0, 2.0, 20).tolist()
    with pytest.raises(DataError) as caught:
        assemble(
            spec_with(eval={"file_id": "file_words"}, dataset=None, passes=quantize),
            load,
            num_outputs=1,
            task="regression",
        )
    assert caught.value.pointer == "/eval" and "needs numbers" in caught.value.detail


@pytest.fixture(scope="module")
def regression_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelState, np.ndarray, np.ndarray]:
    """An ONNX MLP with one value per row (y [batch, 1]), its eval rows and its own values on them."""
    path = models.mlp(tmp_path_factory.mktemp("regression") / "source.onnx", features=16, hidden=64, outputs=1)
    x = models.inputs((120, 16))
    return ModelState.from_onnx(path), x, onnx_outputs(path, x)[:, 0]


def test_a_regression_model_is_measured_by_its_errors_and_agreement(
    regression_model: tuple[ModelState, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    source, x, values = regression_model
    noise = np.random.default_rng(3).normal(scale=0.1, size=values.shape)
    data = PipelineData(eval_x=x, eval_y=values + noise, task="regression")
    spec = spec_with(
        passes=[{"kind": "quantize", "mode": "dynamic"}], measurement=FAST, accuracy_floor={"max_mae_increase": 1.0}
    )
    result = pipeline.run(source, spec.passes, data, tmp_path, floor=spec.accuracy_floor, measurement=spec.measurement)
    report = result.report
    assert report["metric"] == "mae"
    first, quantized = report["stages"]
    assert first["mae"] == pytest.approx(np.mean(np.abs(noise)), rel=1e-4) and first["r2"] > 0.9
    assert quantized["accuracy"] is None and quantized["mae"] < 2 * first["mae"] and quantized["r2"] > 0.8
    assert quantized["rmse"] >= quantized["mae"]
    # against the source: the values as one vector of 120, not 120 one-value rows (each of cosine ±1)
    assert first["mean_cosine"] == pytest.approx(1.0) and 0.99 < quantized["mean_cosine"] < 1.0
    assert 0 < quantized["max_abs_error"] < 0.5
    assert report["overall"]["mae_ratio"] == pytest.approx(quantized["mae"] / first["mae"])


def test_a_regression_model_over_its_mae_ceiling_stops_the_run(
    regression_model: tuple[ModelState, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    source, x, values = regression_model
    # labels that are the source's own values: its MAE is 0, so any error of int8 is over a ceiling of 0
    data = PipelineData(eval_x=x, eval_y=values.astype(np.float64), task="regression")
    spec = spec_with(passes=[{"kind": "quantize", "mode": "dynamic"}], accuracy_floor={"max_mae_increase": 0.5})
    with pytest.raises(pipeline.AccuracyFloorBreached) as caught:
        pipeline.run(source, spec.passes, data, tmp_path, floor=spec.accuracy_floor, measurement=spec.measurement)
    breach = caught.value.breach
    assert (breach.metric, breach.floor) == ("mae", pytest.approx(0.0, abs=1e-6)) and breach.value > 0
    assert "the mae is" in str(caught.value) and "above the ceiling" in str(caught.value)
    assert [row["stage"] for row in caught.value.stages] == ["source", "1. quantize"]


# --- the passes, end to end --------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelState, PipelineData, Path]:
    """A small MLP trained on the training rows of digits, as a compression source."""
    folder = tmp_path_factory.mktemp("source")
    data = assemble(spec_with(), builtin, num_outputs=10)
    zoo = MLPSpec(arch="mlp", hidden=[32])
    torch.manual_seed(0)
    model = build_model(zoo, 64, 10)
    finetune(model, torch.from_numpy(data.train_x), torch.from_numpy(data.train_y), epochs=15, lr=3e-3)
    save_state_dict(model, folder / "source.safetensors", {})
    state = source_state(zoo, folder / "source.safetensors", folder / "source.onnx", data.eval_x)
    return state, data, folder


def test_prune_then_quantize(digits_model: tuple[ModelState, PipelineData, Path], tmp_path: Path) -> None:
    source, data, _ = digits_model
    spec = spec_with(
        passes=[
            {"kind": "prune", "amount": 0.6, "scope": "global", "fine_tune_epochs": 2},
            {"kind": "quantize", "mode": "static", "calibration": {"rows": 64}},
        ],
        measurement=FAST,
    )
    epochs: list[tuple[int, int, int]] = []
    started: list[str] = []
    hooks = pipeline.Hooks(
        pass_started=lambda i, n, kind: started.append(kind),
        on_epoch=lambda i, epoch, n, loss: epochs.append((i, epoch, n)),
    )
    result = pipeline.run(
        source, spec.passes, data, tmp_path, floor=spec.accuracy_floor, measurement=spec.measurement, hooks=hooks
    )
    assert started == ["prune", "quantize"] and epochs == [(0, 1, 2), (0, 2, 2)]
    source_row, pruned, quantized = result.report["stages"]
    assert source_row["accuracy"] > 0.9 and source_row["sparsity"] == 0
    assert pruned["details"]["sparsity"] >= 0.59 and pruned["nonzero_parameters"] < 0.45 * pruned["parameters"]
    assert pruned["onnx_gzip_bytes"] < source_row["onnx_gzip_bytes"]
    assert quantized["parameters"] == pruned["parameters"]  # carried over: the same weights in int8
    assert quantized["onnx_bytes"] < 0.6 * pruned["onnx_bytes"]
    assert "QuantizeLinear" in quantized["details"]["op_types"]
    assert quantized["accuracy"] >= source_row["accuracy"] - 0.05
    assert all(row["latency_p50_ms"] > 0 and row["throughput_items_per_s"] > 0 for row in result.report["stages"])
    assert result.final.torch_model is None and result.final.onnx_path.exists()
    assert len(result.stage_files) == 3


def test_distillation_and_structured_pruning_keep_a_zoo_model(
    digits_model: tuple[ModelState, PipelineData, Path], tmp_path: Path
) -> None:
    source, data, _ = digits_model
    passes = [
        {"kind": "prune", "amount": 0.5, "structured": True, "fine_tune_epochs": 1},
        {"kind": "distill", "student": {"arch": "mlp", "hidden": [8]}, "epochs": 2, "alpha": 0.5},
    ]
    spec = spec_with(passes=passes, measurement={"speed": False}, accuracy_floor={"max_drop": None})
    result = pipeline.run(source, spec.passes, data, tmp_path, floor=spec.accuracy_floor, measurement=spec.measurement)
    _, shrunk, student = result.report["stages"]
    assert shrunk["details"]["arch"]["hidden"] == [16] and shrunk["details"]["channels_kept"] == {"0.0": 16}
    assert student["details"]["student_parameters"] == 64 * 8 + 8 + 8 * 10 + 10
    assert student["parameters"] == student["details"]["student_parameters"]
    assert result.final.zoo == MLPSpec(arch="mlp", hidden=[8]) and result.final.has_torch
    assert student["latency_p50_ms"] is None


def test_a_pass_below_the_floor_stops_the_run_with_the_numbers(
    digits_model: tuple[ModelState, PipelineData, Path], tmp_path: Path
) -> None:
    source, data, _ = digits_model
    spec = spec_with(
        passes=[{"kind": "prune", "amount": 0.99, "fine_tune_epochs": 0}, {"kind": "quantize", "mode": "dynamic"}],
        accuracy_floor={"max_drop": 0.02},
    )
    with pytest.raises(pipeline.AccuracyFloorBreached) as caught:
        pipeline.run(source, spec.passes, data, tmp_path, floor=spec.accuracy_floor, measurement=spec.measurement)
    assert caught.value.index == 0 and caught.value.breach.metric == "accuracy"
    assert caught.value.breach.value < caught.value.breach.floor
    assert [row["stage"] for row in caught.value.stages] == ["source", "1. prune"]


def test_calibration_rows_that_do_not_fit_point_at_the_calibration(
    digits_model: tuple[ModelState, PipelineData, Path], tmp_path: Path
) -> None:
    source, data, _ = digits_model
    spec = spec_with(passes=[{"kind": "quantize", "mode": "static"}])
    bad = PipelineData(data.eval_x, data.eval_y, calibration={0: np.zeros((8, 10), np.float32)})
    with pytest.raises(pipeline.PassFailed) as caught:
        pipeline.run(source, spec.passes, bad, tmp_path, measurement=spec.measurement)
    assert caught.value.pointer == "/passes/0/calibration"


def test_a_raising_hook_stops_training(digits_model: tuple[ModelState, PipelineData, Path], tmp_path: Path) -> None:
    source, data, _ = digits_model
    calls = []

    def on_batch() -> None:
        calls.append(1)
        if len(calls) > 3:
            raise KeyboardInterrupt

    spec = spec_with(passes=[{"kind": "prune", "amount": 0.5, "fine_tune_epochs": 50}])
    with pytest.raises(KeyboardInterrupt):
        pipeline.run(source, spec.passes, data, tmp_path, hooks=pipeline.Hooks(on_batch=on_batch))
    assert len(calls) == 4


def test_a_state_dict_must_fit_its_arch(digits_model: tuple[ModelState, PipelineData, Path]) -> None:
    _, _, folder = digits_model
    model = zoo_model(folder / "source.safetensors", MLPSpec(arch="mlp", hidden=[32]), 64)
    assert sum(p.numel() for p in model.parameters()) == 64 * 32 + 32 + 32 * 10 + 10
    with pytest.raises(SourceError, match="does not fit"):
        zoo_model(folder / "source.safetensors", MLPSpec(arch="mlp", hidden=[33]), 64)
    (folder / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SourceError, match="not a readable"):
        zoo_model(folder / "junk.safetensors", MLPSpec(arch="mlp"), 64)


def test_quantization_options_reach_the_graph(
    digits_model: tuple[ModelState, PipelineData, Path], tmp_path: Path
) -> None:
    source, data, _ = digits_model
    spec = spec_with(
        passes=[{"kind": "quantize", "mode": "fp16", "exclude_op_types": ["Gemm"]}], measurement={"speed": False}
    )
    result = pipeline.run(source, spec.passes, data, tmp_path, measurement=spec.measurement)
    assert result.report["stages"][1]["mean_cosine"] > 0.9999
    missing = spec_with(passes=[{"kind": "quantize", "mode": "dynamic", "exclude_nodes": ["no_such_node"]}])
    with pytest.raises(pipeline.PassFailed) as caught:
        pipeline.run(source, missing.passes, data, tmp_path / "missing", measurement=spec.measurement)
    assert caught.value.pointer == "/passes/0/exclude_nodes"


def test_a_protected_int8_scheme_is_chosen_by_measurement(
    digits_model: tuple[ModelState, PipelineData, Path], tmp_path: Path
) -> None:
    source, data, _ = digits_model
    protect = {"budget_ratio": 0.9, "mean_cosine": 1.0, "min_cosine": 1.0, "smoothing": False}
    spec = spec_with(
        passes=[{"kind": "quantize", "mode": "dynamic", "calibration": {"rows": 64}, "protect": protect}],
        measurement={"speed": False},
    )
    data = assemble(spec, builtin, num_outputs=10)
    result = pipeline.run(source, spec.passes, data, tmp_path, measurement=spec.measurement)
    scheme = result.report["stages"][1]["details"]["scheme"]
    assert scheme["smoothing_alpha"] is None and scheme["budget_bytes"] == int(0.9 * source.onnx_path.stat().st_size)
    assert scheme["node_search"]["sensitivities"], "an unreachable target makes the search probe the nodes"
    assert result.report["stages"][1]["onnx_bytes"] <= scheme["budget_bytes"]
