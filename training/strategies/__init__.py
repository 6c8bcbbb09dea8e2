"""Parallelism strategies, one per module (``ddp``, ``fsdp``, ``pipeline``, ``hybrid``),
each with ``prepare(factory, ctx, spec) -> Trainable`` (see ``base``)."""

from __future__ import annotations

import importlib

from training.dist import DistContext
from training.spec import TrainingSpec
from training.strategies.base import ModelFactory, Trainable


def prepare(factory: ModelFactory, ctx: DistContext, spec: TrainingSpec) -> Trainable:
    """Build this process's part of the model under ``spec.strategy`` (collective; the
    group must have ``spec.strategy.world_size`` processes)."""
    # Only the chosen strategy is imported: torch's pipelining alone takes seconds to import.
    module = importlib.import_module(f"training.strategies.{spec.strategy.kind}")
    return module.prepare(factory, ctx, spec)


__all__ = ["Trainable", "prepare"]
