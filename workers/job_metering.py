"""A job attempt's compute time, written to the usage aggregates (``core.usage``) when it ends.

Compute seconds are the attempt's wall time times the processes it ran (a training job's
``nproc_per_node * nnodes`` ranks; one for every other job type), and count as GPU seconds too
when this worker's training ranks run on CUDA. One row per attempt, in its own transaction:
a job ends a few times an hour, not per request. Metering must never fail a job: errors are logged.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from core import usage
from core.db import through_outage
from workers.runtime import WorkerRuntime

log = logging.getLogger("maas.worker.usage")


def processes(spec: dict[str, Any]) -> int:
    """The processes a job runs: its strategy's ranks per node times its nodes, 1 without a strategy."""
    strategy = spec.get("strategy") if isinstance(spec, dict) else None
    if not isinstance(strategy, dict):
        return 1
    return max(1, int(strategy.get("nproc_per_node") or 1)) * max(1, int(strategy.get("nnodes") or 1))


@functools.cache
def ranks_use_gpus() -> bool:
    """Whether training ranks started here pick CUDA (training.dist does when torch sees a GPU)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def meter_job(rt: WorkerRuntime, tenant_id: str, job_type: str, spec: dict[str, Any], wall_s: float) -> None:
    if not rt.settings.usage_metering_enabled or wall_s <= 0:
        return
    seconds = wall_s * processes(spec)
    gpu = "strategy" in spec and ranks_use_gpus()

    def once() -> None:
        with rt.db() as session:
            usage.record(session, tenant_id, usage.JOB_SECONDS, seconds, subject=job_type)
            if gpu:
                usage.record(session, tenant_id, usage.JOB_GPU_SECONDS, seconds, subject=job_type)
            session.commit()

    try:
        through_outage(once, rt.settings.db_outage_tolerance_s, f"usage of a {job_type} job")
    except Exception as exc:
        log.warning("could not record %.1f s of %s usage for tenant %s: %s", seconds, job_type, tenant_id, exc)
