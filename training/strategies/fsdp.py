"""Fully sharded data parallel (FSDP2, ``fully_shard``): like DDP each process trains on
a 1/world share of the global batch, but parameters, gradients and optimizer state are
sharded across processes; every top-level block is its own FSDP unit, so only one block
is gathered whole at a time."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import cast

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard

from training.dist import DistContext
from training.spec import TrainingSpec
from training.strategies.base import ModelFactory, StepOptions, WholeModelTrainable, build_optimizer, materialize


class FSDPTrainable(WholeModelTrainable):
    def __init__(self, factory: ModelFactory, ctx: DistContext, spec: TrainingSpec) -> None:
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,), mesh_dim_names=("dp",))
        model = factory().to(ctx.device)
        for block in model.children():
            if any(p.requires_grad for p in block.parameters()):
                fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        optimizer = build_optimizer(model.parameters(), spec.hyperparameters)
        options = StepOptions.from_spec(spec.hyperparameters, ctx.device)
        super().__init__(model, optimizer, ctx.world_size, ctx.rank, options)
        self.fsdp_model = cast(FSDPModule, model)
        self.factory = factory
        self.ctx = ctx

    @contextlib.contextmanager
    def gradient_sync(self, enabled: bool) -> Iterator[None]:
        # FSDP2: without sync, gradients stay unsharded and accumulate until the last chunk's backward
        self.fsdp_model.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            self.fsdp_model.set_requires_gradient_sync(True)

    def full_model_on_rank0(self) -> nn.Module | None:
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(self.model, options=options)  # collective; rank 0 gets it all
        # a full state dict holds one plain tensor per name
        return materialize(self.factory, cast(dict[str, torch.Tensor], state)) if self.ctx.is_rank0 else None


def prepare(factory: ModelFactory, ctx: DistContext, spec: TrainingSpec) -> FSDPTrainable:
    return FSDPTrainable(factory, ctx, spec)
