"""Resuming a compression run: the progress saved after a pass, read back in another folder,
lets a run skip the passes it holds and end with the report an uninterrupted run makes; a
progress of other passes, or a torn file, is refused; a regression model's errors come back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from compression import pipeline
from compression.data import PipelineData, read_rows
from compression.data import assemble as assemble_rows
from compression.fidelity import Fidelity, RegressionErrors
from compression.finetune import finetune
from compression.measure import ParameterCounts, file_size
from compression.passes import ModelState
from compression.report import Stage
from compression.resume import Progress, ProgressMismatch, load_progress, save_progress
from compression.sources import source_state
from compression.spec import CompressionSpec, MLPSpec
from tests.support import compression_models as models
from training.export import save_state_dict
from training.zoo import build_model

PASSES = [
    {"kind": "prune", "amount": 0.5, "fine_tune_epochs": 1, "seed": 1},
    {"kind": "distill", "student": {"arch": "mlp", "hidden": [12]}, "epochs": 2, "seed": 2},
    {"kind": "quantize", "mode": "dynamic"},
]


def spec(passes: list[dict[str, Any]] = PASSES) -> CompressionSpec:
    return CompressionSpec.model_validate(
        {
            "source": {"file_id": "file_src", "arch": {"arch": "mlp", "hidden": [24]}},
            "passes": passes,
            "eval": {"builtin": "digits"},
            "dataset": {"builtin": "digits"},
            "measurement": {"speed": False},
            "accuracy_floor": {"max_drop": None},
        }
    )


def options(s: CompressionSpec) -> list[dict[str, Any]]:
    return [p.model_dump(mode="json") for p in s.passes]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModelState, PipelineData]:
    folder = tmp_path_factory.mktemp("source")
    data = assemble_rows(spec(), lambda d, pointer: read_rows(None, d, pointer), num_outputs=10)
    zoo = MLPSpec(arch="mlp", hidden=[24])
    torch.manual_seed(0)
    model = build_model(zoo, 64, 10)
    finetune(model, torch.from_numpy(data.train_x), torch.from_numpy(data.train_y), epochs=5, lr=3e-3)
    save_state_dict(model, folder / "source.safetensors", {})
    return source_state(zoo, folder / "source.safetensors", folder / "source.onnx", data.eval_x), data


def run(state: ModelState, data: PipelineData, work: Path, **kwargs: Any) -> pipeline.PipelineResult:
    s = spec()
    return pipeline.run(state, s.passes, data, work, floor=s.accuracy_floor, measurement=s.measurement, **kwargs)


def comparable(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in report["stages"]]


def test_a_run_resumed_after_its_first_pass_ends_as_an_uninterrupted_one(
    source: tuple[ModelState, PipelineData], tmp_path: Path
) -> None:
    state, data = source
    saved: list[Progress] = []
    whole = run(state, data, tmp_path / "whole", hooks=pipeline.Hooks(pass_saved=saved.append))
    assert [p.done for p in saved] == [1, 2, 3]
    assert saved[0].state.has_torch and not saved[-1].state.has_torch  # quantized: an ONNX graph only

    archive = save_progress(saved[0], options(spec()), tmp_path / "after-1.tar")
    progress = load_progress(archive, tmp_path / "read", options(spec()))
    assert progress.done == 1 and progress.files[-1].parent == tmp_path / "read"
    assert progress.state.has_torch and progress.state.zoo == saved[0].state.zoo
    for name, value in saved[0].state.torch_model.state_dict().items():  # type: ignore[union-attr]
        assert torch.equal(progress.state.torch_model.state_dict()[name], value)  # type: ignore[union-attr]

    started: list[str] = []
    again = run(
        state,
        data,
        tmp_path / "again",
        resume=progress,
        hooks=pipeline.Hooks(pass_started=lambda i, n, k: started.append(k)),
    )
    assert started == ["distill", "quantize"]  # the prune pass is not run again
    assert comparable(again.report) == comparable(whole.report)
    assert again.report["stages"][1]["seconds"] == whole.report["stages"][1]["seconds"]  # the saved stage, as measured
    assert len(again.stage_files) == 4


def test_a_run_saved_after_its_last_pass_only_measures(source: tuple[ModelState, PipelineData], tmp_path: Path) -> None:
    state, data = source
    saved: list[Progress] = []
    whole = run(state, data, tmp_path / "whole", hooks=pipeline.Hooks(pass_saved=saved.append))
    archive = save_progress(saved[-1], options(spec()), tmp_path / "after-3.tar")
    progress = load_progress(archive, tmp_path / "read", options(spec()))
    started: list[str] = []
    again = run(
        state,
        data,
        tmp_path / "again",
        resume=progress,
        hooks=pipeline.Hooks(pass_started=lambda i, n, k: started.append(k)),
    )
    assert started == [] and comparable(again.report) == comparable(whole.report)


def test_progress_of_other_passes_or_a_torn_file_is_refused(
    source: tuple[ModelState, PipelineData], tmp_path: Path
) -> None:
    state, data = source
    saved: list[Progress] = []
    run(state, data, tmp_path / "whole", hooks=pipeline.Hooks(pass_saved=saved.append))
    archive = save_progress(saved[1], options(spec()), tmp_path / "after-2.tar")

    other = options(spec([{**PASSES[0], "amount": 0.6}, *PASSES[1:]]))
    with pytest.raises(ProgressMismatch, match="other passes"):
        load_progress(archive, tmp_path / "other", other)
    with pytest.raises(ProgressMismatch, match="other passes"):
        load_progress(archive, tmp_path / "fewer", options(spec(PASSES[:1])))

    torn = tmp_path / "torn.tar"
    torn.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(ProgressMismatch):
        load_progress(torn, tmp_path / "torn", options(spec()))


def test_a_regression_stage_keeps_its_errors(tmp_path: Path) -> None:
    graph = models.mlp(tmp_path / "value.onnx", outputs=1)
    fidelity = Fidelity(rows=40, mean_cosine=0.999, min_cosine=0.999, max_abs_error=0.02)
    errors = RegressionErrors(rows=40, mae=0.31, rmse=0.4, r2=0.82)
    stages = [
        Stage("source", "source", ParameterCounts(10, 10), file_size(graph), None, fidelity, errors=errors),
        Stage("1. quantize", "quantize", ParameterCounts(10, 10), file_size(graph), None, fidelity, errors=errors),
    ]
    passes = [{"kind": "quantize", "mode": "dynamic"}]
    state = ModelState(graph, ParameterCounts(10, 10), 16)
    archive = save_progress(Progress(1, stages, [graph, graph], state), passes, tmp_path / "after-1.tar")
    assert load_progress(archive, tmp_path / "read", passes).stages == stages
