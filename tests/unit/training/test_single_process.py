"""Strategies, checkpoints and artifacts in a one-process group (no torchrun): every
strategy takes the same steps, a checkpoint resumes exactly, the ONNX export matches."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from training import strategies
from training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from training.curves import draw_curves
from training.dist import DistContext, setup, teardown
from training.export import export_onnx, onnx_max_abs_diff, save_state_dict
from training.loop import Progress, evaluate, evaluate_shared
from training.spec import TrainingSpec
from training.strategies.base import WholeModelTrainable
from training.zoo import build_model

KINDS = ["ddp", "fsdp", "pipeline", "hybrid"]


@pytest.fixture
def ctx() -> Iterator[DistContext]:
    yield setup()
    teardown()


def spec_for(kind: str, dropout: float = 0.0, optimizer: str = "adam") -> TrainingSpec:
    strategy: dict[str, object] = {"kind": kind}
    if kind == "hybrid":
        strategy["pipeline_stages"] = 1
    return TrainingSpec.model_validate(
        {
            "model": {"arch": "mlp", "hidden": [16, 8], "dropout": dropout},
            "dataset": {"builtin": "digits"},
            "strategy": strategy,
            "hyperparameters": {"batch_size": 8, "lr": 0.01, "optimizer": optimizer},
        }
    )


def prepare(spec: TrainingSpec, ctx: DistContext, seed: int = 0) -> strategies.Trainable:
    torch.manual_seed(seed)
    return strategies.prepare(functools.partial(build_model, spec.model, 12, 3), ctx, spec)


def batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(42)
    return [(torch.rand(8, 12, generator=generator), torch.randint(0, 3, (8,), generator=generator)) for _ in range(n)]


def params_of(trainable: strategies.Trainable) -> dict[str, torch.Tensor]:
    model = trainable.full_model_on_rank0()
    assert model is not None
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_every_strategy_takes_the_same_steps(ctx: DistContext) -> None:
    results = {}
    for kind in KINDS:
        trainable = prepare(spec_for(kind, optimizer="sgd"), ctx)
        stats = torch.zeros(3, 3)  # each step's counters, one row a step
        for (x, y), counters in zip(batches(3), stats, strict=True):
            trainable.train_step(x, y, counters)
        results[kind] = (params_of(trainable), stats)
    reference_params, reference_stats = results["ddp"]
    for kind in KINDS[1:]:
        params, stats = results[kind]
        torch.testing.assert_close(stats, reference_stats, rtol=0, atol=1e-6)
        for name, value in reference_params.items():
            torch.testing.assert_close(params[name], value, rtol=0, atol=1e-6, msg=f"{kind} {name}")


@pytest.mark.parametrize("kind", KINDS)
def test_a_checkpoint_resumes_exactly(kind: str, ctx: DistContext, tmp_path: Path) -> None:
    spec = spec_for(kind, dropout=0.3)  # dropout: the RNG must be restored too
    steps = batches(6)
    trainable = prepare(spec, ctx)
    for x, y in steps[:3]:
        trainable.train_step(x, y, torch.zeros(3))
    save_checkpoint(tmp_path / "step-3", trainable, Progress(step=3).to_meta(ctx.world_size), ctx)
    for x, y in steps[3:]:
        trainable.train_step(x, y, torch.zeros(3))
    expected = params_of(trainable)

    resumed = prepare(spec, ctx, seed=99)  # another init and RNG, all overwritten by the checkpoint
    meta = load_checkpoint(tmp_path / "step-3", resumed, ctx)
    assert meta["step"] == 3
    for x, y in steps[3:]:
        resumed.train_step(x, y, torch.zeros(3))
    for name, value in params_of(resumed).items():
        assert torch.equal(value, expected[name]), name


def test_a_checkpoint_keeps_the_fp16_loss_scale(ctx: DistContext, tmp_path: Path) -> None:
    # fp16 trains on CUDA only; a GradScaler also runs on CPU, which is enough to check its round trip
    spec = spec_for("ddp").model_copy(deep=True)
    spec.hyperparameters.precision = "fp16"
    trainable = prepare(spec, ctx)
    assert isinstance(trainable, WholeModelTrainable) and trainable.scaler is not None
    for x, y in batches(2):
        trainable.train_step(x, y, torch.zeros(3))
    trainable.scaler.update(new_scale=1024.0)  # what backing off after overflows leaves
    saved = trainable.scaler.state_dict()
    save_checkpoint(tmp_path / "step-2", trainable, Progress(step=2).to_meta(ctx.world_size), ctx)

    resumed = prepare(spec, ctx, seed=99)
    assert isinstance(resumed, WholeModelTrainable) and resumed.scaler is not None
    assert resumed.scaler.state_dict() != saved
    load_checkpoint(tmp_path / "step-2", resumed, ctx)
    assert resumed.scaler.state_dict() == saved and saved["scale"] == 1024.0


def test_validation_shared_over_processes_uses_the_live_model_and_leaves_its_modes(ctx: DistContext) -> None:
    trainable = prepare(spec_for("ddp", dropout=0.3), ctx)
    model = trainable.replica_for_evaluation()
    assert isinstance(model, torch.nn.Sequential)
    model[0].eval()  # a part that trains in eval mode (a pretrained encoder does) must stay so
    modes = {name: module.training for name, module in model.named_modules()}
    x, y = batches(1)[0]

    shared = evaluate_shared(model, x, y, ctx)

    assert {name: module.training for name, module in model.named_modules()} == modes
    copy = trainable.full_model_on_rank0()
    assert copy is not None
    copy.eval()
    with torch.no_grad():
        out = copy(x)
    expected = {"loss": F.cross_entropy(out, y).item(), "accuracy": (out.argmax(dim=1) == y).float().mean().item()}
    assert shared == pytest.approx(expected) and evaluate(copy, x, y) == pytest.approx(expected)


def test_an_incomplete_checkpoint_is_refused(ctx: DistContext, tmp_path: Path) -> None:
    trainable = prepare(spec_for("ddp"), ctx)
    (tmp_path / "step-3").mkdir()
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "step-3", trainable, ctx)


@pytest.mark.parametrize(
    "model",
    [
        {"arch": "mlp", "dropout": 0.2},
        {"arch": "cnn", "channels": [4, 8], "dropout": 0.2},
        {"arch": "transformer", "d_model": 16, "heads": 2, "layers": 1, "ff_dim": 32},
    ],
    ids=lambda m: m["arch"],
)
def test_the_onnx_export_matches_torch_at_any_batch_size(model: dict[str, object], tmp_path: Path) -> None:
    spec = TrainingSpec.model_validate({"model": model, "dataset": {"builtin": "digits"}})
    torch.manual_seed(0)
    net = build_model(spec.model, 16, 4)
    export_onnx(net, 16, tmp_path / "m.onnx")
    for rows in (1, 7, 64):
        assert onnx_max_abs_diff(net, tmp_path / "m.onnx", torch.rand(rows, 16)) <= 1e-5


def test_the_state_dict_is_saved_as_safetensors(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    net = build_model(spec_for("ddp").model, 12, 3)
    save_state_dict(net, tmp_path / "m.safetensors", {"arch": "mlp"})
    loaded = load_file(tmp_path / "m.safetensors")
    assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())


def test_curves_are_drawn_to_png(tmp_path: Path) -> None:
    history = [
        {"kind": "train", "epoch": 0.5, "loss": 2.0, "accuracy": 0.3},
        {"kind": "train", "epoch": 1.0, "loss": 1.0, "accuracy": 0.6},
        {"kind": "val", "epoch": 1.0, "loss": 1.1, "accuracy": 0.55},
    ]
    draw_curves(history, tmp_path / "c.png", title="mlp")
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
