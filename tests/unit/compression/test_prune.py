"""Pruning on digits models trained here: sparsity and zeros that survive fine-tuning
(unstructured), a really smaller model that computes what the masked model computes
(structured), and options refused with the field named."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from compression.finetune import finetune, predict, torch_accuracy, zero_masks
from compression.measure import file_size, onnx_parameter_counts, parameter_counts
from compression.prune import (
    PruneError,
    PruneOptions,
    mask_channels,
    plan_channels,
    prunable_layers,
    prune_model,
    prune_structured,
    prune_unstructured,
    remaining_after,
    resized_spec,
    shrink,
    sparsity,
    validate_amount,
)
from tests.support.datasets import Digits
from training.export import export_onnx, onnx_max_abs_diff
from training.spec import CNNSpec, MLPSpec, TransformerSpec
from training.zoo import build_model

CNN = CNNSpec(arch="cnn", channels=[16, 32])
MLP = MLPSpec(arch="mlp", hidden=[64, 32])


pytestmark = pytest.mark.usefixtures("one_thread")


def trained(spec: CNNSpec | MLPSpec, digits: Digits, epochs: int) -> nn.Sequential:
    torch.manual_seed(0)
    model = build_model(spec, 64, 10)
    finetune(model, digits.train_x, digits.train_y, epochs=epochs, lr=3e-3, batch_size=32, seed=0)
    return model


@pytest.fixture(scope="module")
def cnn(digits: Digits) -> nn.Sequential:
    return trained(CNN, digits, epochs=6)


@pytest.fixture(scope="module")
def mlp(digits: Digits) -> nn.Sequential:
    return trained(MLP, digits, epochs=6)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: module.weight.detach().clone() for name, module in prunable_layers(model)}


# --- unstructured ------------------------------------------------------------------------------


def test_per_layer_pruning_zeroes_80_percent_of_every_layer(cnn: nn.Sequential) -> None:
    before = weights(cnn)
    pruned = prune_unstructured(cnn, 0.8, scope="layer")
    for name, weight in weights(pruned).items():
        assert int((weight == 0).sum()) == round(0.8 * weight.numel()), name
        # the survivors are the largest magnitudes, unchanged
        kept = weight != 0
        assert torch.equal(weight[kept], before[name][kept])
        assert before[name][~kept].abs().max() <= before[name][kept].abs().min()
    assert math.isclose(sparsity(pruned), 0.8, abs_tol=0.001)
    assert sparsity(cnn) == 0.0, "the source model is not touched"
    assert not any(key.endswith(("_orig", "_mask")) for key in pruned.state_dict()), "made permanent"


def test_global_pruning_ranks_all_layers_together(cnn: nn.Sequential) -> None:
    pruned = prune_unstructured(cnn, 0.8, scope="global")
    total = sum(w.numel() for w in weights(cnn).values())
    zeros = sum(int((w == 0).sum()) for w in weights(pruned).values())
    assert zeros == round(0.8 * total)
    per_layer = [float((w == 0).float().mean()) for w in weights(pruned).values()]
    assert max(per_layer) - min(per_layer) > 0.05, "layers end up with different sparsities"
    counts = parameter_counts(pruned)
    assert counts.total == parameter_counts(cnn).total and counts.nonzero <= counts.total - zeros


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_zeros_survive_fine_tuning_and_accuracy_recovers(cnn: nn.Sequential, digits: Digits, scope: str) -> None:
    pruned = prune_unstructured(cnn, 0.8, scope=scope)  # type: ignore[arg-type]
    zeros_before = {name: w == 0 for name, w in weights(pruned).items()}
    dense_before = weights(pruned)
    accuracy_before = torch_accuracy(pruned, digits.val_x, digits.val_y)
    finetune(pruned, digits.train_x, digits.train_y, epochs=4, lr=1e-3, batch_size=32, seed=0)
    for name, weight in weights(pruned).items():
        assert torch.all(weight[zeros_before[name]] == 0), name
        assert not torch.equal(weight, dense_before[name]), "the surviving weights did train"
    assert math.isclose(sparsity(pruned), 0.8, abs_tol=0.001)
    accuracy_after = torch_accuracy(pruned, digits.val_x, digits.val_y)
    assert accuracy_after > accuracy_before
    assert accuracy_after >= 0.9


def test_unstructured_pruning_reaches_the_linears_inside_a_transformer() -> None:
    torch.manual_seed(0)
    model = build_model(TransformerSpec(arch="transformer", d_model=8, heads=2, layers=1, ff_dim=16), 16, 3)
    pruned = prune_unstructured(model, 0.5, scope="global")
    assert math.isclose(sparsity(pruned), 0.5, abs_tol=0.01)
    assert pruned(torch.rand(2, 16)).shape == (2, 3)


def test_zero_masks_come_only_from_weights_that_are_pruned(mlp: nn.Sequential) -> None:
    pruned = prune_unstructured(mlp, 0.5)
    assert zero_masks(pruned) and not zero_masks(mlp)


# --- structured --------------------------------------------------------------------------------


def test_structured_cnn_keeps_half_the_channels_and_computes_what_the_masked_model_does(
    cnn: nn.Sequential, digits: Digits
) -> None:
    plan = plan_channels(cnn, 0.5, norm="l1")
    assert plan.sizes() == {"0.1": 8, "1.0": 16}
    shrunk, masked = shrink(cnn, plan), mask_channels(cnn, plan)
    assert (shrunk[0][1].out_channels, shrunk[1][0].in_channels, shrunk[1][0].out_channels) == (8, 8, 16)
    assert shrunk[2][1].in_features == 16 * 2 * 2, "the head drops every spatial position of a dropped channel"
    assert shrunk[2][1].out_features == 10
    # the surgery is exact: zeroing the dropped channels in place gives the same logits
    shrunk_logits, masked_logits = predict(shrunk, digits.val_x), predict(masked, digits.val_x)
    assert torch.allclose(shrunk_logits, masked_logits, atol=1e-5, rtol=0)
    assert torch.equal(shrunk_logits.argmax(1), masked_logits.argmax(1))
    assert not torch.allclose(predict(cnn, digits.val_x), masked_logits, atol=1e-3), "channels were really dropped"
    # the kept channels are the strongest by L1 norm
    norms = cnn[0][1].weight.detach().abs().sum(dim=(1, 2, 3))
    dropped = [c for c in range(16) if c not in plan.kept["0.1"]]
    assert norms[dropped].max() <= norms[list(plan.kept["0.1"])].min()


def test_structured_cnn_exports_smaller_and_recovers_with_fine_tuning(
    cnn: nn.Sequential, digits: Digits, tmp_path: Path
) -> None:
    source_accuracy = torch_accuracy(cnn, digits.val_x, digits.val_y)
    shrunk = prune_structured(cnn, 0.5)
    pruned_accuracy = torch_accuracy(shrunk, digits.val_x, digits.val_y)
    finetune(shrunk, digits.train_x, digits.train_y, epochs=4, lr=1e-3, batch_size=32, seed=0)
    tuned_accuracy = torch_accuracy(shrunk, digits.val_x, digits.val_y)
    assert tuned_accuracy > pruned_accuracy
    assert tuned_accuracy >= source_accuracy - 0.05

    export_onnx(cnn, 64, tmp_path / "source.onnx")
    export_onnx(shrunk, 64, tmp_path / "shrunk.onnx")
    assert onnx_max_abs_diff(shrunk, tmp_path / "shrunk.onnx", digits.val_x[:64]) < 1e-4
    source_params, shrunk_params = (
        onnx_parameter_counts(tmp_path / "source.onnx"),
        onnx_parameter_counts(tmp_path / "shrunk.onnx"),
    )
    assert source_params.total == parameter_counts(cnn).total
    assert shrunk_params.total == parameter_counts(shrunk).total < 0.5 * source_params.total
    assert file_size(tmp_path / "shrunk.onnx").bytes < 0.7 * file_size(tmp_path / "source.onnx").bytes


def test_structured_mlp_halves_the_hidden_layers_exactly(mlp: nn.Sequential, digits: Digits) -> None:
    plan = plan_channels(mlp, 0.5, norm="l2")
    shrunk = shrink(mlp, plan)
    assert [m.weight.shape for _, m in prunable_layers(shrunk)] == [(32, 64), (16, 32), (10, 16)]
    assert torch.allclose(predict(shrunk, digits.val_x), predict(mask_channels(mlp, plan), digits.val_x), atol=1e-5)


@pytest.mark.parametrize(("spec", "expected"), [(CNN, [8, 16]), (MLP, [32, 16])], ids=["cnn", "mlp"])
def test_a_shrunk_model_is_the_zoo_model_of_its_resized_spec(
    spec: CNNSpec | MLPSpec, expected: list[int], cnn: nn.Sequential, mlp: nn.Sequential
) -> None:
    shrunk = prune_structured(cnn if isinstance(spec, CNNSpec) else mlp, 0.5)
    smaller = resized_spec(spec, shrunk)
    assert (smaller.channels if isinstance(smaller, CNNSpec) else smaller.hidden) == expected
    rebuilt = build_model(smaller, 64, 10)
    rebuilt.load_state_dict(shrunk.state_dict(), strict=True)
    x = torch.rand(4, 64)
    assert torch.equal(predict(rebuilt, x), predict(shrunk, x))


def test_structured_pruning_never_removes_a_whole_layer() -> None:
    assert remaining_after(16, 0.5) == 8
    assert remaining_after(4, 0.99) == 1
    assert remaining_after(1, 0.9) == 1
    assert remaining_after(10, 0.04) == 10  # rounds like torch.nn.utils.prune
    torch.manual_seed(0)
    tiny = prune_structured(build_model(MLPSpec(arch="mlp", hidden=[3, 2]), 8, 4), 0.99)
    assert [m.out_features for _, m in prunable_layers(tiny)] == [1, 1, 4]


def test_structured_pruning_refuses_a_transformer() -> None:
    torch.manual_seed(0)
    model = build_model(TransformerSpec(arch="transformer", d_model=8, heads=2, layers=1, ff_dim=16), 16, 3)
    with pytest.raises(PruneError) as raised:
        prune_structured(model, 0.5)
    assert raised.value.field == "structured"
    assert "mlp and cnn" in str(raised.value)


def test_structured_pruning_needs_a_hidden_layer() -> None:
    with pytest.raises(PruneError, match="hidden layer"):
        plan_channels(nn.Sequential(nn.Linear(4, 2)), 0.5)


# --- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [0, 0.0, 1, 1.0, -0.2, 1.5, math.nan, math.inf, True, "0.5", None])
def test_amount_outside_the_open_unit_interval_is_refused(amount: object, mlp: nn.Sequential) -> None:
    for attempt in (
        lambda: validate_amount(amount),
        lambda: PruneOptions.from_mapping({"kind": "prune", "amount": amount}),
        lambda: prune_unstructured(mlp, amount),  # type: ignore[arg-type]
        lambda: plan_channels(mlp, amount),  # type: ignore[arg-type]
    ):
        with pytest.raises(PruneError) as raised:
            attempt()
        assert raised.value.field == "amount"
        assert "between 0 and 1" in str(raised.value)


def test_pass_options_are_validated_with_the_field_named() -> None:
    options = PruneOptions.from_mapping({"kind": "prune", "amount": 0.8, "structured": False, "fine_tune_epochs": 2})
    assert options == PruneOptions(amount=0.8, fine_tune_epochs=2)
    cases = {
        "amount": {},
        "ratio": {"amount": 0.5, "ratio": 0.5},
        "scope": {"amount": 0.5, "structured": True, "scope": "global"},
        "norm": {"amount": 0.5, "norm": "l3"},
        "structured": {"amount": 0.5, "structured": "yes"},
        "fine_tune_epochs": {"amount": 0.5, "fine_tune_epochs": -1},
    }
    for field, mapping in cases.items():
        with pytest.raises(PruneError) as raised:
            PruneOptions.from_mapping(mapping)
        assert raised.value.field == field, mapping


def test_prune_model_follows_the_options(mlp: nn.Sequential) -> None:
    smaller = prune_model(mlp, PruneOptions(amount=0.5, structured=True))
    sparse = prune_model(mlp, PruneOptions(amount=0.5, scope="global"))
    assert parameter_counts(smaller).total < parameter_counts(mlp).total
    assert parameter_counts(sparse).total == parameter_counts(mlp).total
    assert math.isclose(sparsity(sparse), 0.5, abs_tol=0.001)
