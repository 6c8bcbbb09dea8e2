"""Checkpoints: a directory ``step-N`` holding the model and optimizer state written with
``torch.distributed.checkpoint`` (every rank writes its own shard; works for all
strategies, sharded or not), each rank's RNG state (``rng-rank{r}.safetensors``),
optionally the early-stopping best weights (``best.safetensors``, rank 0) and ``meta.json``
(the step, the loop's counters and the metric history), so a resumed run takes exactly the
steps the interrupted one would have.

Off the critical path: at a checkpoint the step only copies its state to CPU memory
(:func:`snapshot`); :class:`BackgroundCheckpointer` writes it from a thread, over a gloo
process group of its own (so its collectives never interleave with training's), and the
next checkpoint waits for the previous write, never the step. A checkpoint is written to
``step-N.partial`` and renamed once every rank's part and ``meta.json`` (last) are on disk:
a run killed mid-write leaves no directory that looks whole, and only a renamed one is
announced (``on_written``) for upload. With several nodes the output directory must be on a
shared file system.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint import CheckpointException
from torch.utils._pytree import tree_map_only

from training.dist import DistContext
from training.strategies import Trainable

META = "meta.json"
BEST = "best.safetensors"


class CheckpointError(Exception):
    """The checkpoint to resume from is missing, incomplete or from another run shape."""


def checkpoint_dir(out_dir: Path, step: int) -> Path:
    return out_dir / "checkpoints" / f"step-{step}"


@dataclass(frozen=True)
class Snapshot:
    """One rank's state at one step, copied off the live tensors (CPU memory)."""

    directory: Path
    state: dict[str, Any]
    rng: dict[str, torch.Tensor]
    meta: dict[str, Any]  # rank 0's; written last
    best: dict[str, torch.Tensor] | None = None  # rank 0's early-stopping best weights


def snapshot(
    directory: Path,
    trainable: Trainable,
    meta: dict[str, Any],
    ctx: DistContext,
    best: dict[str, torch.Tensor] | None = None,
) -> Snapshot:
    """Copy this rank's checkpoint state to CPU memory (the only part a step waits for)."""
    state = tree_map_only(torch.Tensor, _cpu_copy, trainable.state_dict_for_checkpoint())
    return Snapshot(directory, state, _rng_state(ctx), json.loads(json.dumps(meta)), best)


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    # a DTensor (fsdp) stays one, with its local shard copied
    return tensor.detach().to("cpu", copy=True)


def write_checkpoint(snap: Snapshot, ctx: DistContext, group: dist.ProcessGroup | None = None) -> Path:
    """Write ``snap`` (collective over ``group``): every rank its part, then rank 0 the meta
    and the rename that makes it whole. Returns the directory."""
    directory = snap.directory
    partial = directory.with_name(directory.name + ".partial")
    if ctx.is_rank0:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
    dist.barrier(group=group)
    dcp.save(snap.state, checkpoint_id=partial, process_group=group)
    save_file(snap.rng, partial / f"rng-rank{ctx.rank}.safetensors")
    dist.barrier(group=group)
    if ctx.is_rank0:
        if snap.best is not None:
            save_file(snap.best, partial / BEST)
        (partial / META).write_text(json.dumps(snap.meta))
        shutil.rmtree(directory, ignore_errors=True)
        partial.rename(directory)
    return directory


def save_checkpoint(directory: Path, trainable: Trainable, meta: dict[str, Any], ctx: DistContext) -> Path:
    """Snapshot and write a checkpoint now (collective), in the calling thread."""
    path = write_checkpoint(snapshot(directory, trainable, meta, ctx), ctx)
    dist.barrier()
    return path


class BackgroundCheckpointer:
    """Writes snapshots from one background thread, one at a time (collective: every rank
    makes one, in the same order). ``on_written(directory, meta)`` runs on rank 0 once a
    checkpoint is whole."""

    def __init__(self, ctx: DistContext, on_written: Callable[[Path, dict[str, Any]], None]) -> None:
        self.ctx, self.on_written = ctx, on_written
        # a group of its own: the writer's collectives run while training's run on the default group
        self.group = dist.new_group(backend="gloo") if ctx.world_size > 1 else None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, snap: Snapshot) -> None:
        """Write ``snap`` in the background, after the previous one is written."""
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(snap,), name=f"checkpoint-{snap.directory.name}")
        self._thread.start()

    def wait(self) -> None:
        """Block until the pending write (if any) is done; raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise CheckpointError(f"writing a checkpoint failed: {error}") from error

    @property
    def busy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _write(self, snap: Snapshot) -> None:
        try:
            path = write_checkpoint(snap, self.ctx, self.group)
            if self.ctx.is_rank0:
                self.on_written(path, snap.meta)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc


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


def load_best(directory: Path) -> dict[str, torch.Tensor] | None:
    """The early-stopping best weights a checkpoint holds (rank 0 reads them), or None."""
    path = directory / BEST
    return load_file(path) if path.is_file() else None


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest whole checkpoint under ``out_dir`` (a ``.partial`` one never counts)."""
    found = [(int(p.name.removeprefix("step-")), p) for p in (out_dir / "checkpoints").glob("step-*")
             if p.is_dir() and not p.name.endswith(".partial") and (p / META).is_file()]  # fmt: skip
    return max(found)[1] if found else None


def _rng_state(ctx: DistContext) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if ctx.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return state


def _set_rng_state(state: dict[str, torch.Tensor], ctx: DistContext) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], ctx.device)
