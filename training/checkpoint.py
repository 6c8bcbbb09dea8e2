"""Checkpoints: a directory ``step-N`` holding the model and optimizer state written with
``torch.distributed.checkpoint`` (every rank writes its own shard; works for all
strategies, sharded or not), each rank's RNG state (``rng-rank{r}.safetensors``) and
``meta.json`` (the step, the loop's counters and the metric history), so a resumed run
takes exactly the steps the interrupted one would have.

A checkpoint is written to ``step-N.partial`` and renamed once complete: a run killed
mid-write leaves no directory that looks whole. With several nodes the output directory
must be on a shared file system.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import CheckpointException

from training.dist import DistContext
from training.strategies import Trainable

META = "meta.json"


class CheckpointError(Exception):
    """The checkpoint to resume from is missing, incomplete or from another run shape."""


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step}"


def save_checkpoint(directory: Path, trainable: Trainable, meta: dict[str, Any], ctx: DistContext) -> Path:
    """Write a checkpoint (collective); returns ``directory``."""
    partial = directory.with_name(directory.name + ".partial")
    if ctx.is_rank0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier()
    dcp.save(trainable.state_dict_for_checkpoint(), checkpoint_id=partial)
    save_file(_rng_state(ctx), partial / f"rng-rank{ctx.rank}.safetensors")
    dist.barrier()
    if ctx.is_rank0:
        (partial / META).write_text(json.dumps(meta))
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
    dist.barrier()
    return directory


def load_checkpoint(directory: Path, trainable: Trainable, ctx: DistContext) -> dict[str, Any]:
    """Restore ``trainable`` and this rank's RNG from ``directory`` (collective); returns the meta."""
    meta_path = directory / META
    if not meta_path.is_file():
        raise CheckpointError(f"{directory} is not a complete checkpoint (no {META})")
    meta = json.loads(meta_path.read_text())
    if meta.get("world_size") != ctx.world_size:
        raise CheckpointError(
            f"the checkpoint was written by {meta.get('world_size')} processes, this run has {ctx.world_size}"
        )
    state = trainable.state_dict_for_checkpoint()
    try:
        dcp.load(state, checkpoint_id=directory)
        trainable.load_checkpoint(state)
        rng = load_file(directory / f"rng-rank{ctx.rank}.safetensors")
    except (CheckpointException, RuntimeError, KeyError, ValueError, OSError) as exc:
        raise CheckpointError(f"{directory} does not fit this run (another model or strategy?): {exc}") from exc
    _set_rng_state(rng, ctx)
    return meta


def _rng_state(ctx: DistContext) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], ctx: DistContext) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], ctx.device)
