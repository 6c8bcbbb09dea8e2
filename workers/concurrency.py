"""How many jobs a worker runs at once when ``--concurrency`` is not given.

A pool of the training queue alone runs one job per GPU (one on a machine without): a training
job already uses every core or its GPU, so two would only slow each other down. Any other pool
takes ``MAAS_WORKER_CONCURRENCY``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.broker import TRAINING

_GPU_DEVICE = re.compile(r"nvidia\d+")


def visible_gpus(env: Mapping[str, str] = os.environ, dev: Path = Path("/dev")) -> int:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else the NVIDIA device files."""
    if "CUDA_VISIBLE_DEVICES" in env:
        return len([d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d.strip() and d.strip() != "-1"])
    try:
        return sum(1 for entry in dev.iterdir() if _GPU_DEVICE.fullmatch(entry.name))
    except OSError:
        return 0


def default_concurrency(queues: Sequence[str], configured: int, gpus: int) -> int:
    """Jobs at once for a worker of ``queues``: one per GPU (at least one) for a training-only pool."""
    if list(queues) == [TRAINING]:
        return max(gpus, 1)
    return configured
