"""The model zoo: shapes, and pipeline stages that compute exactly what the whole model does."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from training.spec import CNNSpec, MLPSpec, TransformerSpec, stageable_layers
from training.zoo import build_model, split_stages, stage_sizes

SPECS = [
    MLPSpec(arch="mlp", hidden=[32, 16, 8]),
    CNNSpec(arch="cnn", channels=[4, 8]),
    TransformerSpec(arch="transformer", d_model=16, heads=2, layers=2, ff_dim=32),
]


def model_for(spec: MLPSpec | CNNSpec | TransformerSpec, seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return build_model(spec, num_features=64, num_classes=10)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.arch)
def test_models_map_features_to_logits(spec: MLPSpec | CNNSpec | TransformerSpec) -> None:
    model = model_for(spec)
    assert model(torch.rand(5, 64)).shape == (5, 10)
    assert len(model) == stageable_layers(spec)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.arch)
def test_the_same_seed_builds_the_same_model(spec: MLPSpec | CNNSpec | TransformerSpec) -> None:
    first, second = model_for(spec, seed=3), model_for(spec, seed=3)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_cnn_on_non_square_features_is_refused() -> None:
    with pytest.raises(ValueError, match="square"):
        build_model(CNNSpec(arch="cnn"), num_features=63, num_classes=3)


def test_a_cnn_pools_only_while_the_image_is_large_enough() -> None:
    model = build_model(CNNSpec(arch="cnn", channels=[2, 2, 2, 2]), num_features=64, num_classes=3)
    assert model(torch.rand(2, 64)).shape == (2, 3)  # 8 → 4 → 2, then no more pooling


def test_stage_sizes_are_balanced_and_contiguous() -> None:
    assert stage_sizes(5, 2) == [3, 2]
    assert stage_sizes(4, 4) == [1, 1, 1, 1]
    assert stage_sizes(7, 3) == [3, 2, 2]
    with pytest.raises(ValueError):
        stage_sizes(2, 3)
    with pytest.raises(ValueError):
        stage_sizes(2, 0)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.arch)
def test_stages_compute_the_same_outputs_and_gradients(spec: MLPSpec | CNNSpec | TransformerSpec) -> None:
    whole = model_for(spec)
    x, y = torch.rand(6, 64), torch.randint(0, 10, (6,))
    F.cross_entropy(whole(x), y).backward()
    for num_stages in range(1, len(whole) + 1):
        copy_ = copy.deepcopy(whole)
        copy_.zero_grad(set_to_none=True)
        stages = split_stages(copy_, num_stages)
        assert len(stages) == num_stages
        out = x
        for stage in stages:
            out = stage(out)
        assert torch.equal(out, whole(x))
        F.cross_entropy(out, y).backward()
        stage_grads = {name: p.grad for stage in stages for name, p in stage.named_parameters()}
        assert stage_grads.keys() == dict(whole.named_parameters()).keys()
        for name, p in whole.named_parameters():
            assert torch.equal(stage_grads[name], p.grad), name


def test_stage_state_dicts_merge_into_the_whole_model() -> None:
    whole = model_for(SPECS[0])
    merged = {}
    for stage in split_stages(whole, 3):
        merged.update(stage.state_dict())
    assert merged.keys() == whole.state_dict().keys()


def test_split_stages_leaves_the_model_alone() -> None:
    whole = model_for(SPECS[0])
    names_before = [name for name, _ in whole.named_children()]
    stages = split_stages(whole, 2)
    assert [name for name, _ in whole.named_children()] == names_before
    assert stages[0][0] is whole[0]  # shared, not copied
