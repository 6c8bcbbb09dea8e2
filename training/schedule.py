"""Learning-rate schedules: the factor of the base ``lr`` at each optimizer step (pure math,
no torch). Linear warm-up from 0 to 1 over ``warmup_steps``, then ``cosine`` (half a cosine
down to ``min_lr_ratio``), ``linear`` (a straight line down to ``min_lr_ratio``) or
``constant`` (1) until the last of ``total_steps``.

Step ``s`` counts from 1: the first update runs at ``lr_factor(1, ...)``, which is
``1 / warmup_steps`` during warm-up (never 0, so no update is wasted).
"""

from __future__ import annotations

import math

from training.spec import LRScheduleSpec


def lr_factor(step: int, total_steps: int, schedule: LRScheduleSpec | None) -> float:
    """The multiplier of the base learning rate for optimizer step ``step`` (1-based)."""
    if schedule is None:
        return 1.0
    warmup = schedule.warmup_steps
    if step <= warmup:
        return step / warmup
    if schedule.decay == "constant":
        return 1.0
    decay_steps = max(1, total_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)  # 0 just after warm-up, 1 at the last step
    floor = schedule.min_lr_ratio
    if schedule.decay == "linear":
        return 1.0 - (1.0 - floor) * progress
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
