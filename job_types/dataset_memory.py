"""Whether a job's datasets fit the worker's memory, checked before any process starts: every
training rank reads the whole dataset, so a dataset of D bytes (once read: the
``uncompressed_bytes`` that upload validation stored) takes about D times the ranks on one node.
A job that cannot fit fails at once with ``dataset_too_large`` instead of a rank being killed
(or the machine swapping) part way through."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from sqlalchemy import select

from core.file_validation import TABLE_VALUE_BYTES, format_bytes
from core.models import File
from core.spec_kit import stored_dataset
from job_types.base import JobFailed, RunContext


def dataset_bytes(details: Mapping[str, Any]) -> int:
    """What a dataset takes once read, from its stored details: ``uncompressed_bytes``, or for a
    file uploaded before that was stored, the same sum from its arrays or rows and columns."""
    if "uncompressed_bytes" in details:
        return int(details["uncompressed_bytes"])
    try:
        stored = stored_dataset(details)
    except ValueError:  # not a dataset's details: nothing a rank loads
        return 0
    if stored.is_table:
        return stored.rows * len(stored.column_names) * TABLE_VALUE_BYTES
    return sum(np.dtype(a.dtype).itemsize * math.prod(a.shape) for a in (stored.arrays or {}).values())


def memory_shortfall(data_bytes: int, ranks: int, available: int) -> JobFailed | None:
    """``dataset_too_large`` when ``ranks`` processes each holding ``data_bytes`` need more than
    the ``available`` bytes of memory; None when they fit."""
    needed = data_bytes * ranks
    if needed <= available:
        return None
    return JobFailed(
        "dataset_too_large",
        f"the dataset needs about {format_bytes(needed)} of memory with {ranks} rank{'s' * (ranks != 1)} "
        f"(each loads all {format_bytes(data_bytes)}), the worker has {format_bytes(available)} available",
        needed_bytes=needed,
        available_bytes=available,
        ranks=ranks,
    )


CGROUP_V2 = Path("/sys/fs/cgroup")


def cgroup_headroom(root: Path = CGROUP_V2) -> int | None:
    """What the container's cgroup v2 memory limit leaves (limit - current); None without a limit.

    In a container ``psutil`` sees the host's memory, and the kernel kills at the cgroup's limit."""
    try:
        limit = (root / "memory.max").read_text().strip()
        current = int((root / "memory.current").read_text())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(int(limit) - current, 0)


def available_memory(configured: int | None) -> int:
    """The bytes a job's data may take on this worker: ``worker_memory_bytes`` when set, else the
    machine's available memory, capped by the cgroup's headroom."""
    if configured is not None:
        return configured
    available = psutil.virtual_memory().available
    headroom = cgroup_headroom()
    return available if headroom is None else min(available, headroom)


def check_worker_memory(ctx: RunContext, file_ids: Iterable[str | None], ranks: int) -> None:
    """Raise ``dataset_too_large`` when the tenant's files ``file_ids`` (None: a builtin, which is
    small) cannot fit this worker's memory (:func:`available_memory`) ``ranks`` times."""
    wanted = [file_id for file_id in file_ids if file_id]
    if not wanted:
        return
    with ctx.db() as session:
        rows = session.execute(
            select(File.id, File.details).where(File.tenant_id == ctx.tenant_id, File.id.in_(wanted))
        )
        details = {file_id: found or {} for file_id, found in rows}
    # a file gone since is the download's to report; one named twice is read twice
    data_bytes = sum(dataset_bytes(details[file_id]) for file_id in wanted if file_id in details)
    available = available_memory(ctx.settings.worker_memory_bytes)
    if (failure := memory_shortfall(data_bytes, ranks, available)) is not None:
        raise failure
