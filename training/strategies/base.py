"""The interface every parallelism strategy implements, and what they share: the optimizer
from the spec, per-batch statistics, and model/optimizer state in the form
``torch.distributed.checkpoint`` saves.

A strategy wraps a freshly built model for this process and exposes ``train_step``
(one global batch: forward, backward, gradient exchange, optimizer step; the batch's loss and
metric counters added in place to the loop's, with no per-step stack or host sync),
``state_dict_for_checkpoint``/``load_checkpoint`` and ``full_model_on_rank0``.
All methods except ``train_step`` are collective: every rank calls them.
``WholeModelTrainable`` is the part DDP and FSDP share.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from training.spec import HyperparametersSpec

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}

ModelFactory = Callable[[], nn.Sequential]

# Optimizer state keyed by parameter name, so ranks holding different stages never collide.
_DCP_OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)


class Trainable(ABC):
    """One process's share of a model being trained."""

    data_replicas: int  # how many replicas split each global batch
    data_rank: int  # which share this process feeds
    optimizer: torch.optim.Optimizer  # the learning-rate schedule sets its groups' lr

    @abstractmethod
    def train_step(self, x: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> None:
        """Train on this replica's rows of one global batch; add this process's
        ``[loss_sum, correct, count]`` to ``totals`` (nothing where it computes no loss)."""

    @abstractmethod
    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        """Model and optimizer state, keyed for ``torch.distributed.checkpoint``."""

    @abstractmethod
    def load_checkpoint(self, state: dict[str, Any]) -> None:
        """Load what ``state_dict_for_checkpoint`` returned (after dcp.load filled it)."""

    @abstractmethod
    def full_model_on_rank0(self) -> nn.Module | None:
        """An unwrapped CPU copy of the whole model on rank 0 (None elsewhere)."""

    def replica_for_evaluation(self) -> nn.Module | None:
        """The whole model this process trains, unwrapped and live, where every process holds
        one (validation then splits its rows over the processes); None: rank 0 evaluates
        ``full_model_on_rank0``."""
        return None


@dataclass(frozen=True)
class StepOptions:
    """How a data-parallel step runs: accumulation chunks, autocast, gradient clipping."""

    accumulation: int = 1
    precision: str = "fp32"
    clip_norm: float | None = None
    device_type: str = "cpu"

    @classmethod
    def from_spec(cls, hp: HyperparametersSpec, device: torch.device) -> StepOptions:
        return cls(hp.grad_accumulation_steps, hp.precision, hp.grad_clip_norm, device.type)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=AUTOCAST_DTYPES[self.precision])


class WholeModelTrainable(Trainable):
    """A data-parallel strategy's common part: each process runs the whole (wrapped) model
    on its share of the batch, and the wrapper exchanges gradients during backward (once per
    step: accumulation chunks before the last skip it)."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        replicas: int,
        rank: int,
        options: StepOptions | None = None,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.data_replicas, self.data_rank = replicas, rank
        self.options = options or StepOptions()
        # fp16's narrow range needs loss scaling; bf16 has fp32's range
        self.scaler = torch.amp.GradScaler(self.options.device_type) if self.options.precision == "fp16" else None

    def train_step(self, x: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        chunks = self.options.accumulation
        for index, (x_part, y_part) in enumerate(zip(x.chunk(chunks), y.chunk(chunks), strict=True)):
            with self.gradient_sync(index == chunks - 1), self.options.autocast():
                logits = self.model(x_part).float()
                loss = task_loss(logits, y_part)
                scaled = loss / chunks if chunks > 1 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            add_batch_stats(totals, loss, logits, y_part)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.options.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        """Whether this backward exchanges gradients (the wrapper's own switch; see ddp, fsdp)."""
        yield

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        state = module_checkpoint_state(self.model, self.optimizer)
        if self.scaler is not None:
            # fp16's loss scale and growth tracker: a resume starting from the initial scale
            # would skip steps (inf gradients) until it had backed off again
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        load_module_checkpoint_state(self.model, self.optimizer, state)
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])


def build_optimizer(params: Iterable[torch.nn.Parameter], hp: HyperparametersSpec) -> torch.optim.Optimizer:
    if hp.optimizer == "sgd":
        return torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    if hp.optimizer == "adam":
        return torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
    return torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against class indices; mean squared error against float targets (a
    regression head's ``(batch, 1)`` output)."""
    if y.is_floating_point():
        return F.mse_loss(logits.reshape(y.shape), y)
    return F.cross_entropy(logits, y)


def add_batch_stats(totals: torch.Tensor, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
    """Add ``[loss_sum, correct, count]`` of a batch whose mean loss is ``loss`` to ``totals``;
    for float targets the middle counter sums absolute errors instead of counting correct
    predictions. In place, one small op per counter: it runs every step, and building a
    tensor to add cost about 2% of a digits CNN step."""
    count = y.shape[0]
    loss_sum, second, rows = totals.unbind()
    loss_sum.add_(loss.detach(), alpha=count)
    if y.is_floating_point():
        second.add_((logits.detach().reshape(y.shape) - y).abs().sum())
    else:
        second.add_(logits.detach().argmax(dim=1).eq(y).sum())
    rows.add_(count)


def module_checkpoint_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "model": get_model_state_dict(module, options=_DCP_OPTIONS),
        "optim": get_optimizer_state_dict(module, optimizer, options=_DCP_OPTIONS),
    }


def load_module_checkpoint_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    set_model_state_dict(module, state["model"], options=_DCP_OPTIONS)
    set_optimizer_state_dict(module, optimizer, state["optim"], options=_DCP_OPTIONS)


def materialize(factory: ModelFactory, state: dict[str, torch.Tensor]) -> nn.Module:
    """A model from ``factory`` holding ``state``, built on the meta device so that no
    initialisation runs and the global RNG is left alone."""
    with torch.device("meta"):
        model = factory()
    model.load_state_dict(state, strict=True, assign=True)
    return model
