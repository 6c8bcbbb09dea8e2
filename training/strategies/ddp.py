"""Data parallel: every process holds the whole model and a 1/world share of each global
batch; DistributedDataParallel averages gradients, so N processes take the same steps as
one process with the same global batch."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from training.dist import DistContext
from training.spec import TrainingSpec
from training.strategies.base import ModelFactory, StepOptions, WholeModelTrainable, build_optimizer


class DDPTrainable(WholeModelTrainable):
    model: DistributedDataParallel

    def __init__(self, model: nn.Module, ctx: DistContext, spec: TrainingSpec) -> None:
        device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
        wrapped = DistributedDataParallel(model.to(ctx.device), device_ids=device_ids)
        optimizer = build_optimizer(wrapped.parameters(), spec.hyperparameters)
        options = StepOptions.from_spec(spec.hyperparameters, ctx.device)
        super().__init__(wrapped, optimizer, ctx.world_size, ctx.rank, options)
        self.ctx = ctx

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        if enabled:
            yield
        else:
            with self.model.no_sync():
                yield

    def full_model_on_rank0(self) -> nn.Module | None:
        return copy.deepcopy(self.model.module).cpu() if self.ctx.is_rank0 else None

    def replica_for_evaluation(self) -> nn.Module:
        return self.model.module


def prepare(factory: ModelFactory, ctx: DistContext, spec: TrainingSpec) -> DDPTrainable:
    return DDPTrainable(factory(), ctx, spec)
