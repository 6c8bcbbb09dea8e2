"""Data parallel x pipeline on a 2-D device mesh ``(dp, pp)``: ranks ``d*pp .. d*pp+pp-1``
form pipeline replica ``d``; each replica trains on a 1/dp share of the global batch, and
the replicas average each stage's gradients over the ``dp`` dimension (one all-reduce of
the flattened gradients) before the optimizer step."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh

from training.dist import DistContext
from training.spec import TrainingSpec
from training.strategies.base import ModelFactory
from training.strategies.pipeline import PipelineTrainable


def average_gradients(group: dist.ProcessGroup, replicas: int) -> Callable[[list[nn.Parameter]], None]:
    def hook(params: list[nn.Parameter]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        flat /= replicas
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()

    return hook


def prepare(factory: ModelFactory, ctx: DistContext, spec: TrainingSpec) -> PipelineTrainable:
    stages, replicas = spec.strategy.stages, spec.strategy.data_parallel_size
    mesh = init_device_mesh(ctx.device.type, (replicas, stages), mesh_dim_names=("dp", "pp"))
    dp_group = mesh.get_group("dp")
    return PipelineTrainable(
        factory,
        ctx,
        spec,
        stage_index=mesh.get_local_rank("pp"),
        group=mesh.get_group("pp"),
        data_replicas=replicas,
        data_rank=mesh.get_local_rank("dp"),
        after_backward=average_gradients(dp_group, replicas),
    )
