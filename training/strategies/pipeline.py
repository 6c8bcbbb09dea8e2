"""Pipeline model parallel (``torch.distributed.pipelining``): the model's blocks are cut
into contiguous stages (``training.zoo.split_stages``), one ``PipelineStage`` per process,
and each global batch runs as microbatches under the GPipe or 1F1B schedule. Gradients
are the mean over microbatches, so the step equals the unsplit model's step.

``PipelineTrainable`` also serves the hybrid strategy: it takes the pipeline's process
group and an optional gradient hook that runs between backward and the optimizer step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

from training.dist import DistContext
from training.spec import TrainingSpec
from training.strategies.base import (
    ModelFactory,
    Trainable,
    add_batch_stats,
    build_optimizer,
    load_module_checkpoint_state,
    materialize,
    module_checkpoint_state,
    task_loss,
)
from training.zoo import split_stages

GradientHook = Callable[[list[nn.Parameter]], None]

SCHEDULES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}


class PipelineTrainable(Trainable):
    def __init__(
        self,
        factory: ModelFactory,
        ctx: DistContext,
        spec: TrainingSpec,
        *,
        stage_index: int,
        group: dist.ProcessGroup | None = None,
        data_replicas: int = 1,
        data_rank: int = 0,
        after_backward: GradientHook | None = None,
    ) -> None:
        strategy = spec.strategy
        self.num_stages = strategy.stages
        self.stage_index = stage_index
        self.module = split_stages(factory(), self.num_stages)[stage_index].to(ctx.device)
        stage = PipelineStage(self.module, stage_index, self.num_stages, ctx.device, group=group)
        self.schedule = SCHEDULES[strategy.schedule](stage, strategy.microbatches or 1, loss_fn=task_loss)
        self.optimizer = build_optimizer(self.module.parameters(), spec.hyperparameters)
        self.factory = factory
        self.ctx = ctx
        self.after_backward = after_backward
        self.stage_group = group  # every stage of this pipeline (None: the whole world)
        self.clip_norm = spec.hyperparameters.grad_clip_norm
        self.data_replicas, self.data_rank = data_replicas, data_rank

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == self.num_stages - 1

    def train_step(self, x: torch.Tensor, y: torch.Tensor, totals: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        losses: list[torch.Tensor] = []
        inputs = (x,) if self.is_first else ()
        logits = self.schedule.step(*inputs, target=y if self.is_last else None, losses=losses)
        if self.after_backward is not None:
            self.after_backward(list(self.module.parameters()))
        if self.clip_norm is not None:
            clip_across_stages(list(self.module.parameters()), self.clip_norm, self.stage_group)
        self.optimizer.step()
        if self.is_last:
            add_batch_stats(totals, torch.stack(losses).mean(), logits, y)

    def state_dict_for_checkpoint(self) -> dict[str, Any]:
        return module_checkpoint_state(self.module, self.optimizer)

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        load_module_checkpoint_state(self.module, self.optimizer, state)

    def full_model_on_rank0(self) -> nn.Module | None:
        # Stage blocks keep their names in the whole model, so the parts merge by update();
        # data-parallel replicas hold identical copies, only the first one sends.
        part = {k: v.detach().cpu() for k, v in self.module.state_dict().items()} if self.data_rank == 0 else {}
        parts: list[dict[str, torch.Tensor]] | None = (
            [{} for _ in range(self.ctx.world_size)] if self.ctx.is_rank0 else None
        )
        dist.gather_object(part, parts, dst=0)
        if parts is None:
            return None
        merged: dict[str, torch.Tensor] = {}
        for received in parts:
            merged.update(received)
        return materialize(self.factory, merged)


def clip_across_stages(params: list[nn.Parameter], max_norm: float, group: dist.ProcessGroup | None) -> None:
    """Scale the gradients so the whole model's L2 norm (every stage's share summed) is at
    most ``max_norm``, as ``clip_grad_norm_`` would on the unsplit model."""
    grads = [p.grad for p in params if p.grad is not None]
    device = params[0].device if params else torch.device("cpu")
    squares = torch.stack([g.pow(2).sum() for g in grads]).sum() if grads else torch.zeros((), device=device)
    dist.all_reduce(squares, op=dist.ReduceOp.SUM, group=group)
    scale = max_norm / (float(squares.sqrt()) + 1e-6)
    if scale < 1.0:
        torch._foreach_mul_(grads, scale)


def prepare(factory: ModelFactory, ctx: DistContext, spec: TrainingSpec) -> PipelineTrainable:
    return PipelineTrainable(factory, ctx, spec, stage_index=ctx.rank)
