"""The small training loop compression passes share: fine-tuning after pruning and training
a distilled student.

Owns: seeded mini-batch orders, one Adam loop over in-memory tensors with a pluggable loss,
and keeping pruned weights at zero while the rest learn (the zeros a pass made are masks
that every optimiser step re-applies). Runs on one process; the global RNG is left as it
was (the loop seeds a forked one), so a call is repeatable with the same seed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from compression.prune import PRUNABLE_TYPES

# loss(model outputs, batch targets...) -> scalar
LossFn = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be ≥ 0, got {self.epochs}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {self.batch_size}")


def batch_orders(rows: int, batch_size: int, epochs: int, seed: int) -> list[list[torch.Tensor]]:
    """Row indices of each mini-batch of each epoch: a fresh permutation per epoch, the last
    batch possibly short. The same for the same arguments."""
    generator = torch.Generator().manual_seed(seed)
    return [list(torch.randperm(rows, generator=generator).split(batch_size)) for _ in range(epochs)]


def zero_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Where the Linear/Conv weights of ``model`` are exactly zero (1 = trainable, 0 = pruned),
    for those that have any zero at all; weights under an active ``torch.nn.utils.prune``
    reparametrisation are skipped, their own mask already holds them at zero."""
    masks: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if not isinstance(module, PRUNABLE_TYPES) or hasattr(module, "weight_mask"):
            continue
        mask = (module.weight.detach() != 0).to(module.weight.dtype)
        if not bool(mask.all()):
            masks[name] = mask
    return masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, mask in masks.items():
            modules[name].weight.mul_(mask)


def train(
    model: nn.Module,
    x: torch.Tensor,
    targets: tuple[torch.Tensor, ...],
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    masks: dict[str, torch.Tensor] | None = None,
) -> list[float]:
    """Train ``model`` in place with Adam on ``x`` and per-row ``targets`` (each indexed like
    ``x``); returns the mean loss of each epoch and leaves the model in eval mode. Weights
    under ``masks`` stay zero."""
    masks = masks or {}
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    epoch_losses: list[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)  # dropout draws from the global RNG
        model.train()
        for epoch in batch_orders(len(x), config.batch_size, config.epochs, config.seed):
            total = 0.0
            for index in epoch:
                optimizer.zero_grad(set_to_none=True)
                loss = loss_fn(model(x[index]), *(t[index] for t in targets))
                loss.backward()
                optimizer.step()
                apply_masks(model, masks)
                total += float(loss.detach()) * len(index)
            epoch_losses.append(total / len(x))
    model.eval()
    return epoch_losses


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    *,
    keep_zeros: bool = True,
) -> list[float]:
    """Fine-tune a classifier in place with cross entropy; with ``keep_zeros`` every Linear/Conv
    weight that is zero now is still zero after (what pruning removed stays removed)."""
    masks = zero_masks(model) if keep_zeros else {}
    config = TrainConfig(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed)
    return train(model, x, (y,), F.cross_entropy, config, masks=masks)


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The model's outputs on ``x`` in eval mode, batched."""
    model.eval()
    return torch.cat([model(part) for part in x.split(batch_size)])


def torch_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, x).argmax(dim=1) == y).float().mean())
