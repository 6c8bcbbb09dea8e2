"""Magnitude pruning of zoo models, unstructured and structured.

Owns: the pruning pass's options and their validation; unstructured magnitude pruning per
layer and global with ``torch.nn.utils.prune``, made permanent (plain weights holding
zeros); structured pruning that removes whole Linear neurons and Conv2d channels by their
L1/L2 norm and rebuilds the layer after each, so the model really is smaller (a
``ChannelPlan`` says what is kept; the same plan can zero the channels in place instead,
which computes exactly what the shrunk model computes); sparsity.

Every function returns a new model and leaves its argument untouched. Fine-tuning after a
pass lives in ``compression.finetune``.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeAlias, cast

import torch
from torch import nn
from torch.nn.utils import prune

from compression.measure import ParameterCounts, count_tensors, parameter_counts
from core.spec_kit import OptionError
from training.spec import CNNSpec, MLPSpec, TransformerSpec

PrunableLayer: TypeAlias = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d
PRUNABLE_TYPES: tuple[type[nn.Linear], type[nn.Conv1d], type[nn.Conv2d], type[nn.Conv3d]] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
)

Scope = Literal["layer", "global"]
Norm = Literal["l1", "l2"]

__all__ = [
    "PRUNABLE_TYPES",
    "ChannelPlan",
    "ParameterCounts",
    "PruneError",
    "PruneOptions",
    "mask_channels",
    "parameter_counts",
    "plan_channels",
    "prunable_layers",
    "prune_model",
    "prune_structured",
    "prune_unstructured",
    "remaining_after",
    "resized_spec",
    "shrink",
    "sparsity",
    "validate_amount",
]


class PruneError(OptionError):
    """A pruning request that cannot be carried out; ``field`` names the pass option at fault
    (``amount``, ``structured``...), so the API can point at it."""


# --- options -----------------------------------------------------------------------------------


def validate_amount(amount: Any, field: str = "amount") -> float:
    """``amount`` as a float strictly between 0 and 1, or a ``PruneError`` naming ``field``."""
    if isinstance(amount, bool) or not isinstance(amount, int | float):
        raise PruneError(field, f"must be a number between 0 and 1 (exclusive), got {amount!r}")
    if not (math.isfinite(amount) and 0.0 < amount < 1.0):
        raise PruneError(field, f"must be between 0 and 1 (exclusive): the fraction of weights removed, got {amount}")
    return float(amount)


@dataclass(frozen=True)
class PruneOptions:
    """One pruning pass: ``amount`` of the weights (unstructured) or of the channels/neurons of
    each layer (structured), ``scope`` per layer or global (unstructured only), ``norm`` that
    ranks channels (structured only), then ``fine_tune_epochs`` of fine-tuning."""

    amount: float
    structured: bool = False
    scope: Scope = "layer"
    norm: Norm = "l1"
    fine_tune_epochs: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "amount", validate_amount(self.amount))
        if not isinstance(self.structured, bool):
            raise PruneError("structured", f"must be true or false, got {self.structured!r}")
        if self.scope not in ("layer", "global"):
            raise PruneError("scope", f"must be 'layer' or 'global', got {self.scope!r}")
        if self.structured and self.scope == "global":
            raise PruneError("scope", "structured pruning removes the same fraction of every layer; use 'layer'")
        if self.norm not in ("l1", "l2"):
            raise PruneError("norm", f"must be 'l1' or 'l2', got {self.norm!r}")
        epochs = self.fine_tune_epochs
        if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
            raise PruneError("fine_tune_epochs", f"must be a whole number ≥ 0, got {epochs!r}")

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> PruneOptions:
        """Options from a pass as the job spec writes it (``kind`` is allowed and ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known - {"kind"})
        if unknown:
            raise PruneError(unknown[0], f"is not a pruning option; the options are {', '.join(sorted(known))}")
        if "amount" not in options:
            raise PruneError("amount", "is required")
        return cls(**{k: v for k, v in options.items() if k in known})


# --- measurements ------------------------------------------------------------------------------


def prunable_layers(model: nn.Module) -> list[tuple[str, PrunableLayer]]:
    """(qualified name, module) of every Linear/Conv layer, in definition order."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, PRUNABLE_TYPES)]


def sparsity(model: nn.Module) -> float:
    """Fraction of zeros among the Linear/Conv weights (what pruning acts on; biases and other
    parameters are not counted)."""
    counts = count_tensors([_weight(module) for _, module in prunable_layers(model)])
    return counts.sparsity


def _weight(module: PrunableLayer) -> torch.Tensor:
    # under an active reparametrisation ``weight`` is the masked tensor, as the forward sees it
    return module.weight.detach()


# --- unstructured ------------------------------------------------------------------------------


def prune_unstructured(model: nn.Module, amount: float, scope: Scope = "layer") -> nn.Module:
    """A copy of ``model`` with the smallest-magnitude ``amount`` of the Linear/Conv weights set to
    zero: of each layer (``layer``) or of all of them ranked together (``global``). Permanent:
    the copy's state dict holds plain weights, no masks."""
    amount = validate_amount(amount)
    pruned = copy.deepcopy(model)
    targets = [(module, "weight") for _, module in prunable_layers(pruned)]
    if not targets:
        raise PruneError("kind", "the model has no Linear or Conv layers to prune")
    if scope == "global":
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    elif scope == "layer":
        for module, name in targets:
            prune.l1_unstructured(module, name, amount=amount)
    else:
        raise PruneError("scope", f"must be 'layer' or 'global', got {scope!r}")
    for module, name in targets:
        prune.remove(module, name)
    return pruned


# --- structured: which channels stay -----------------------------------------------------------


@dataclass(frozen=True)
class ChannelPlan:
    """For each Linear/Conv2d whose outputs are pruned (every one but the output layer), by
    qualified module name: the sorted output indices kept."""

    kept: dict[str, tuple[int, ...]]
    original: dict[str, int]  # name -> outputs before

    def sizes(self) -> dict[str, int]:
        return {name: len(kept) for name, kept in self.kept.items()}


def remaining_after(size: int, amount: float) -> int:
    """Channels left when ``amount`` of ``size`` are removed: rounded like
    ``torch.nn.utils.prune``, never fewer than one."""
    removed = round(amount * size)
    return max(1, size - removed)


def channel_norms(weight: torch.Tensor, norm: Norm) -> torch.Tensor:
    """One norm per output channel (the first axis) of a Linear or Conv weight."""
    flat = weight.detach().reshape(weight.shape[0], -1)
    return flat.abs().sum(dim=1) if norm == "l1" else flat.norm(dim=1)


def strongest(norms: torch.Tensor, keep: int) -> tuple[int, ...]:
    """Indices of the ``keep`` largest norms, sorted; ties go to the earlier channel."""
    order = torch.argsort(norms, descending=True, stable=True)[:keep]
    return tuple(sorted(int(i) for i in order))


@dataclass(frozen=True)
class _Slot:
    """Where a leaf module sits, so a rebuilt layer can take its place under the same name."""

    parent: nn.Module
    key: str
    name: str  # qualified


_Layer: TypeAlias = nn.Linear | nn.Conv2d  # what structured pruning rebuilds
_Pair: TypeAlias = tuple[int, int]

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.GELU, nn.Tanh, nn.Dropout, nn.Identity, nn.MaxPool2d)


def _leaves(model: nn.Module, prefix: str = "") -> list[_Slot]:
    """The leaf modules of nested ``nn.Sequential`` containers, in execution order."""
    if not isinstance(model, nn.Sequential):
        raise PruneError(
            "structured", f"structured pruning supports the zoo's mlp and cnn; found a {type(model).__name__}"
        )
    slots: list[_Slot] = []
    for key, child in model.named_children():
        name = f"{prefix}{key}"
        if isinstance(child, nn.Sequential):
            slots += _leaves(child, f"{name}.")
        else:
            slots.append(_Slot(model, key, name))
    return slots


def _module(slot: _Slot) -> nn.Module:
    return cast(nn.Module, slot.parent._modules[slot.key])  # a slot comes from named_children, which skips None


def _layer(slot: _Slot) -> _Layer:
    """The module in a slot ``_layers`` returned, which holds a Linear or a Conv2d. Read when
    needed, not kept: ``shrink`` replaces modules in their slots as it goes."""
    return cast(_Layer, _module(slot))


def _chain(model: nn.Module) -> list[_Slot]:
    """The leaves of a model structured pruning can rebuild: Linear/Conv2d layers joined by
    zero-preserving element-wise modules (f(0) = 0, so a zeroed channel stays zero), an
    Unflatten before the first layer, and a Flatten from a Conv2d to a Linear."""
    slots = _leaves(model)
    layers = [i for i, s in enumerate(slots) if isinstance(_module(s), nn.Linear | nn.Conv2d)]
    for index, slot in enumerate(slots):
        module = _module(slot)
        if isinstance(module, (nn.Linear, nn.Conv2d, *_ELEMENTWISE)):
            if isinstance(module, nn.Conv2d) and (module.groups != 1):
                raise PruneError("structured", f"grouped convolution {slot.name} is not supported")
            continue
        if isinstance(module, nn.Unflatten) and layers and index < layers[0]:
            continue
        if isinstance(module, nn.Flatten) and _between_conv_and_linear(slots, index):
            continue
        raise PruneError(
            "structured",
            f"structured pruning supports the zoo's mlp and cnn; {slot.name} is a {type(module).__name__}",
        )
    if len(layers) < 2:
        raise PruneError("structured", "structured pruning needs at least one hidden layer before the output layer")
    return slots


def _between_conv_and_linear(slots: list[_Slot], index: int) -> bool:
    before = [_module(s) for s in slots[:index] if isinstance(_module(s), nn.Linear | nn.Conv2d)]
    after = [_module(s) for s in slots[index + 1 :] if isinstance(_module(s), nn.Linear | nn.Conv2d)]
    return bool(before) and bool(after) and isinstance(before[-1], nn.Conv2d) and isinstance(after[0], nn.Linear)


def _layers(model: nn.Module) -> list[_Slot]:
    return [s for s in _chain(model) if isinstance(_module(s), nn.Linear | nn.Conv2d)]


def plan_channels(model: nn.Module, amount: float, norm: Norm = "l1") -> ChannelPlan:
    """Which outputs of each hidden Linear/Conv2d to keep: the ``1 - amount`` fraction with the
    largest weight norms (the output layer keeps all: those are the classes)."""
    amount = validate_amount(amount)
    if norm not in ("l1", "l2"):
        raise PruneError("norm", f"must be 'l1' or 'l2', got {norm!r}")
    kept: dict[str, tuple[int, ...]] = {}
    original: dict[str, int] = {}
    for slot in _layers(model)[:-1]:
        weight = _layer(slot).weight
        original[slot.name] = weight.shape[0]
        kept[slot.name] = strongest(channel_norms(weight, norm), remaining_after(weight.shape[0], amount))
    return ChannelPlan(kept=kept, original=original)


# --- structured: surgery -----------------------------------------------------------------------


def mask_channels(model: nn.Module, plan: ChannelPlan) -> nn.Module:
    """A copy of ``model``, same shapes, with the weights and biases of the channels ``plan``
    drops set to zero: what the shrunk model computes, without the shrinking."""
    masked = copy.deepcopy(model)
    with torch.no_grad():
        for slot in _layers(masked)[:-1]:
            layer = _layer(slot)
            dropped = _dropped(plan, slot.name, layer.weight.shape[0])
            layer.weight[dropped] = 0
            if layer.bias is not None:
                layer.bias[dropped] = 0
    return masked


def _dropped(plan: ChannelPlan, name: str, size: int) -> torch.Tensor:
    keep = torch.zeros(size, dtype=torch.bool)
    keep[list(plan.kept[name])] = True
    return ~keep


def shrink(model: nn.Module, plan: ChannelPlan) -> nn.Module:
    """A smaller copy of ``model`` without the channels ``plan`` drops: each hidden layer loses
    those outputs and the next layer the matching inputs (after a Flatten, every spatial
    position of a dropped channel). Module names are kept, so the state dict loads into the
    zoo model built from ``resized_spec``."""
    shrunk = copy.deepcopy(model)
    layers = _layers(shrunk)
    for slot, following in itertools.pairwise(layers):
        layer, nxt = _layer(slot), _layer(following)
        keep = torch.tensor(plan.kept[slot.name], dtype=torch.long)
        inputs = _input_index(layer, nxt, keep)
        slot.parent._modules[slot.key] = _take(layer, outputs=keep)
        following.parent._modules[following.key] = _take(nxt, inputs=inputs)
    return shrunk


def _input_index(layer: _Layer, nxt: _Layer, keep: torch.Tensor) -> torch.Tensor:
    """Input positions of ``nxt`` fed by the kept outputs of ``layer``."""
    channels = layer.weight.shape[0]
    if isinstance(layer, nn.Conv2d) and isinstance(nxt, nn.Linear):
        spatial, rest = divmod(nxt.in_features, channels)
        if rest:
            raise PruneError("structured", f"{nxt.in_features} flattened inputs are not {channels} whole channels")
        # Flatten is channel-major: channel c owns inputs c*spatial .. c*spatial + spatial - 1
        return (keep[:, None] * spatial + torch.arange(spatial)).reshape(-1)
    return keep


def _take(layer: _Layer, outputs: torch.Tensor | None = None, inputs: torch.Tensor | None = None) -> nn.Module:
    """A new layer of the same kind holding the selected output rows and input columns."""
    weight = layer.weight.detach()
    bias = layer.bias.detach() if layer.bias is not None else None
    if outputs is not None:
        weight = weight[outputs]
        bias = bias[outputs] if bias is not None else None
    if inputs is not None:
        weight = weight[:, inputs]
    if isinstance(layer, nn.Linear):
        new: _Layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    else:
        # a Conv2d holds 2-tuples here; torch annotates them on _ConvNd as tuple[int, ...]
        new = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            cast(_Pair, layer.kernel_size),
            stride=cast(_Pair, layer.stride),
            padding=cast(str | _Pair, layer.padding),
            dilation=cast(_Pair, layer.dilation),
            bias=bias is not None,
            padding_mode=layer.padding_mode,
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None and new.bias is not None:  # new has a bias exactly when bias is set
            new.bias.copy_(bias)
    return new.to(dtype=layer.weight.dtype)


def prune_structured(model: nn.Module, amount: float, norm: Norm = "l1") -> nn.Module:
    """A smaller copy of ``model`` with ``amount`` of the channels/neurons of every hidden layer
    removed, the weakest by ``norm`` first."""
    return shrink(model, plan_channels(model, amount, norm))


def resized_spec(spec: MLPSpec | CNNSpec | TransformerSpec, model: nn.Module) -> MLPSpec | CNNSpec:
    """The zoo spec of a structurally pruned ``model`` that started from ``spec``: the hidden
    widths (mlp) or channels (cnn) it now has."""
    sizes = [_layer(s).weight.shape[0] for s in _layers(model)[:-1]]
    if isinstance(spec, MLPSpec):
        return spec.model_copy(update={"hidden": sizes})
    if isinstance(spec, CNNSpec):
        return spec.model_copy(update={"channels": sizes})
    raise PruneError("structured", f"structured pruning supports the zoo's mlp and cnn, not {spec.arch}")


# --- the pass ----------------------------------------------------------------------------------


def prune_model(model: nn.Module, options: PruneOptions) -> nn.Module:
    """The pass without its fine-tuning: a pruned copy of ``model``."""
    if options.structured:
        return prune_structured(model, options.amount, options.norm)
    return prune_unstructured(model, options.amount, options.scope)
