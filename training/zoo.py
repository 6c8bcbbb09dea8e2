"""The model zoo: the math of every architecture a training spec can name, how a model
is cut into pipeline stages, and how a model starts from a registered version's weights
(``init_from``). Knows nothing of processes or parallelism.

The pretrained text encoders (``training.text_encoder``) are built here too; they map
token ids ``int64 (batch, tokens)`` to logits and are not cut into stages.

Every model maps float32 features ``(batch, num_features)`` to logits ``(batch,
num_classes)`` and is an ``nn.Sequential`` of blocks (``training.spec.stageable_layers``
counts them); ``split_stages`` cuts that sequence into contiguous stages that share the
blocks, and keeps their names, so stage state dicts merge back into the whole model's.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from training.spec import AnyModel, CNNSpec, MLPSpec, TextEncoderSpec, TransformerSpec, image_side, stageable_layers


def build_model(model_spec: MLPSpec | CNNSpec | TransformerSpec, num_features: int, num_classes: int) -> nn.Sequential:
    """A freshly initialised model (seed the global RNG first for a repeatable one)."""
    if isinstance(model_spec, MLPSpec):
        blocks = _mlp_blocks(model_spec, num_features, num_classes)
    elif isinstance(model_spec, CNNSpec):
        blocks = _cnn_blocks(model_spec, num_features, num_classes)
    else:
        blocks = _transformer_blocks(model_spec, num_features, num_classes)
    model = nn.Sequential(*blocks)
    assert len(model) == stageable_layers(model_spec)
    return model


def build_any(model_spec: AnyModel, num_features: int, num_classes: int, init_from: Path | None = None) -> nn.Module:
    """The model a training job trains: a zoo model or a pretrained text encoder with a fresh
    head, then the weights of ``init_from`` (a safetensors state dict) when given."""
    model: nn.Module
    if isinstance(model_spec, TextEncoderSpec):
        from training.text_encoder import build_text_classifier  # transformers: only text jobs pay for it

        model = build_text_classifier(
            model_spec.pretrained,
            num_classes,
            max_length=model_spec.max_length,
            dropout=model_spec.dropout,
            freeze_encoder=model_spec.freeze_encoder,
            freeze_layers=model_spec.freeze_layers,
            regression=model_spec.head == "regression",
        )
    else:
        model = build_model(model_spec, num_features, num_classes)
    if init_from is not None:
        load_initial_weights(model, init_from)
    return model


class InitFromError(ValueError):
    """The weights to start from do not fit the model (``init_from``)."""


def head_prefix(model: nn.Module) -> str:
    """The state-dict prefix of the output layer: what may differ when the classes differ."""
    if isinstance(model, nn.Sequential):
        return f"{len(model) - 1}."
    return "head."


def load_initial_weights(model: nn.Module, path: Path) -> list[str]:
    """Load every tensor of the safetensors file ``path`` into ``model``; the head's tensors
    are skipped (left freshly initialised) when their shapes differ, as when the new data has
    another number of classes. Returns the names skipped; raises ``InitFromError`` when any
    other tensor is missing, extra or of another shape (another architecture or settings)."""
    from safetensors.torch import load_file

    try:
        stored = load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise InitFromError(f"init_from: the version's weights cannot be read: {exc}") from exc
    own = model.state_dict()
    head = head_prefix(model)
    missing = sorted(set(own) - set(stored))
    extra = sorted(set(stored) - set(own))
    if missing or extra:
        raise InitFromError(
            f"init_from: the version's weights are not this model's (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    skipped = []
    for name, tensor in own.items():
        if tuple(stored[name].shape) == tuple(tensor.shape):
            continue
        if not name.startswith(head):
            raise InitFromError(
                f"init_from: tensor {name} has shape {list(stored[name].shape)} in the version, "
                f"{list(tensor.shape)} here; the features or the settings differ"
            )
        skipped.append(name)
    with torch.no_grad():
        for name, tensor in own.items():
            if name not in skipped:
                tensor.copy_(stored[name])
    return skipped


def stage_sizes(num_blocks: int, num_stages: int) -> list[int]:
    """Blocks per stage, as even as possible, earlier stages taking the remainder."""
    if not 1 <= num_stages <= num_blocks:
        raise ValueError(f"cannot cut {num_blocks} blocks into {num_stages} stages")
    base, extra = divmod(num_blocks, num_stages)
    return [base + (stage < extra) for stage in range(num_stages)]


def split_stages(model: nn.Sequential, num_stages: int) -> list[nn.Sequential]:
    """Contiguous stages sharing ``model``'s blocks (not copies; ``model`` is not changed).
    Running them one after the other is running ``model``."""
    children = list(model.named_children())
    stages, start = [], 0
    for size in stage_sizes(len(children), num_stages):
        stages.append(nn.Sequential(OrderedDict(children[start : start + size])))
        start += size
    return stages


# --- mlp ---------------------------------------------------------------------------------------


def _mlp_blocks(spec: MLPSpec, num_features: int, num_classes: int) -> list[nn.Module]:
    blocks: list[nn.Module] = []
    width = num_features
    for hidden in spec.hidden:
        blocks.append(nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), *_dropout(spec.dropout)))
        width = hidden
    blocks.append(nn.Linear(width, num_classes))
    return blocks


def _dropout(p: float) -> list[nn.Module]:
    # no module at all when off, so the exported graph has nothing to skip
    return [nn.Dropout(p)] if p > 0 else []


# --- cnn ---------------------------------------------------------------------------------------


def _cnn_blocks(spec: CNNSpec, num_features: int, num_classes: int) -> list[nn.Module]:
    side = image_side((num_features,))
    if side is None:
        raise ValueError(f"a cnn needs a square number of features, got {num_features}")
    blocks: list[nn.Module] = []
    in_channels = 1
    for index, channels in enumerate(spec.channels):
        layers: list[nn.Module] = [nn.Unflatten(1, (1, side, side))] if index == 0 else []
        layers += [nn.Conv2d(in_channels, channels, spec.kernel_size, padding=spec.kernel_size // 2), nn.ReLU()]
        if side >= 4:
            layers.append(nn.MaxPool2d(2))
            side //= 2
        blocks.append(nn.Sequential(*layers, *_dropout(spec.dropout)))
        in_channels = channels
    blocks.append(nn.Sequential(nn.Flatten(), nn.Linear(in_channels * side * side, num_classes)))
    return blocks


# --- transformer -------------------------------------------------------------------------------


class FeatureTokens(nn.Module):
    """One token per feature: ``value * weight[i] + bias[i]`` (FT-Transformer's tokenizer),
    so the position of a feature is carried by its own embedding."""

    def __init__(self, num_features: int, d_model: int) -> None:
        super().__init__()
        bound = 1 / math.sqrt(d_model)
        self.weight = nn.Parameter(torch.empty(num_features, d_model).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(num_features, d_model).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(-1) * self.weight + self.bias


class SelfAttention(nn.Module):
    """Multi-head self-attention written out (no fused kernels), so every backend and the
    ONNX export compute the same thing."""

    def __init__(self, d_model: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, tokens, d_model = x.shape
        head_dim = d_model // self.heads
        q, k, v = self.qkv(x).reshape(-1, tokens, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(head_dim), dim=-1)
        mixed = (self.dropout(weights) @ v).transpose(1, 2).reshape(-1, tokens, d_model)
        return self.out(mixed)


class EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block."""

    def __init__(self, d_model: int, heads: int, ff_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model, heads, dropout)
        self.norm2 = nn.LayerNorm(d_model)
        self.feed_forward = nn.Sequential(nn.Linear(d_model, ff_dim), nn.GELU(), nn.Linear(ff_dim, d_model))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x)))
        return x + self.dropout(self.feed_forward(self.norm2(x)))


class MeanPoolHead(nn.Module):
    def __init__(self, d_model: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d_model)
        self.linear = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(x.mean(dim=1)))


def _transformer_blocks(spec: TransformerSpec, num_features: int, num_classes: int) -> list[nn.Module]:
    return [
        FeatureTokens(num_features, spec.d_model),
        *(EncoderBlock(spec.d_model, spec.heads, spec.ff_dim, spec.dropout) for _ in range(spec.layers)),
        MeanPoolHead(spec.d_model, num_classes),
    ]
