"""``python -m compression``: arguments to a spec, a run on local files, refusals with pointers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from compression.cli import build_spec, main, parse_args
from compression.finetune import finetune
from training.data import load_builtin
from training.export import export_onnx, save_state_dict
from training.spec import MLPSpec
from training.zoo import build_model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    digits = load_builtin("digits")
    torch.manual_seed(0)
    model = build_model(MLPSpec(arch="mlp", hidden=[16]), 64, 10)
    finetune(model, torch.from_numpy(digits.x), torch.from_numpy(digits.y), epochs=5, lr=5e-3)
    save_state_dict(model, folder / "mlp.safetensors", {})
    export_onnx(model, 64, folder / "mlp.onnx")
    np.savez(folder / "digits.npz", X=digits.x, y=digits.y)
    return folder


def test_arguments_become_a_spec(files: Path) -> None:
    data = str(files / "digits.npz")
    args = parse_args(
        [
            "--source",
            "m.safetensors",
            "--arch",
            '{"arch": "mlp", "hidden": [16]}',
            "--out",
            "o",
            "--passes",
            '[{"kind": "prune", "amount": 0.5}, {"kind": "quantize", "mode": "static"}]',
            "--eval",
            data,
            "--dataset",
            data,
            "--calibration",
            "digits",
            "--eval-fraction",
            "0.25",
            "--threads",
            "2",
        ]
    )
    spec, paths = build_spec(args)
    assert spec.source.arch == MLPSpec(arch="mlp", hidden=[16])
    assert spec.eval.same_data(spec.dataset) and spec.eval.fraction == 0.25
    assert spec.passes[1].calibration is not None and spec.passes[1].calibration.builtin == "digits"
    assert spec.measurement.threads == 2
    assert paths == {"file_eval": files / "digits.npz"}


def test_a_passes_file_may_hold_a_whole_spec(files: Path, tmp_path: Path) -> None:
    body = {"passes": [{"kind": "quantize", "mode": "fp16"}], "accuracy_floor": {"max_drop": 0.01}}
    (tmp_path / "passes.json").write_text(json.dumps(body))
    spec, _ = build_spec(
        parse_args(["--source", "m.onnx", "--passes", str(tmp_path / "passes.json"), "--eval", "digits", "--out", "o"])
    )
    assert spec.accuracy_floor.max_drop == 0.01 and spec.passes[0].mode == "fp16"


def test_a_run_writes_the_model_and_the_report(files: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    passes = json.dumps(
        {
            "passes": [
                {"kind": "prune", "amount": 0.5, "scope": "global", "fine_tune_epochs": 1},
                {"kind": "quantize", "mode": "dynamic"},
            ],
            "measurement": {"latency_iterations": 5, "throughput_iterations": 2, "warmup": 1},
        }
    )
    data = str(files / "digits.npz")
    code = main(
        [
            "--source",
            str(files / "mlp.safetensors"),
            "--arch",
            '{"arch": "mlp", "hidden": [16]}',
            "--passes",
            passes,
            "--eval",
            data,
            "--dataset",
            data,
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 0
    assert {"model.onnx", "report.json", "report.md", "report.png"} <= {p.name for p in tmp_path.iterdir()}
    report = json.loads((tmp_path / "report.json").read_text())
    assert [s["stage"] for s in report["stages"]] == ["source", "1. prune", "2. quantize"]
    assert report["meta"]["notes"][0].startswith("eval: 359 rows held out")
    assert "| 2. quantize |" in capsys.readouterr().out


def test_a_pass_that_does_not_apply_is_refused_with_its_pointer(
    files: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prune = '[{"kind": "prune", "amount": 0.5, "fine_tune_epochs": 0}]'
    code = main(["--source", str(files / "mlp.onnx"), "--passes", prune, "--eval", "digits", "--out", str(tmp_path)])
    assert code == 2
    assert "/passes/0/kind: prune needs the model's weights" in capsys.readouterr().err
    code = main(
        [
            "--source",
            str(files / "mlp.onnx"),
            "--passes",
            '[{"kind": "prune", "amount": 2}]',
            "--eval",
            "digits",
            "--out",
            str(tmp_path),
        ]
    )
    assert code == 2
    assert "/passes/0/amount" in capsys.readouterr().err
