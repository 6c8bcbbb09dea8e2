"""The process group: reads the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), picks the backend (NCCL when CUDA is available, gloo
otherwise) and the device, and falls back to a one-process group when started without
torchrun, so every strategy runs the same code either way.

The only module of ``training`` that reads the environment.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_rank0(self) -> bool:
        return self.rank == 0


def pick_backend(cuda_available: bool) -> str:
    return "nccl" if cuda_available else "gloo"


def setup() -> DistContext:
    """Join (or, without torchrun, create) the default process group."""
    cuda = torch.cuda.is_available()
    backend = pick_backend(cuda)
    launched = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    rank = int(os.environ["RANK"]) if launched else 0
    world_size = int(os.environ["WORLD_SIZE"]) if launched else 1
    local_rank = int(os.environ.get("LOCAL_RANK", "0")) if launched else 0
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        if launched:
            dist.init_process_group(backend, device_id=device if cuda else None)
        else:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, backend=backend, device=device)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def sum_across_ranks(values: torch.Tensor) -> torch.Tensor:
    """The elementwise sum of ``values`` over all processes (every process gets it)."""
    total = values.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
