"""The API process's usage counters (``core.usage``) and the task that writes them in bulk.

Requests add to in-memory counters (``count_*``: a dict update, no I/O); every
``usage_flush_s`` one ``INSERT … ON CONFLICT DO UPDATE`` adds them to ``usage_hourly``, and every
``usage_storage_sample_s`` one statement samples every tenant's stored bytes. A failed write
keeps its counters for the next one; a crash loses at most one interval's counts (the same
accepted risk as ``api.prediction_recorder``). Off (``usage_metering_enabled``) it counts nothing.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker

from api.periodic_flush import PeriodicFlush
from core import usage
from core.settings import Settings

log = logging.getLogger("maas.api.usage")


class UsageMeter:
    def __init__(self, settings: Settings, db: async_sessionmaker) -> None:
        self.enabled = settings.usage_metering_enabled
        self.db = db
        self.sample_s = settings.usage_storage_sample_s
        self.counters = usage.UsageCounters()
        self._sampled_at = float("-inf")
        self._writer = PeriodicFlush(self.flush, settings.usage_flush_s, name="usage-meter")

    # ---- the hot path: no I/O

    def count_prediction(self, row: dict[str, Any], rows: int) -> None:
        """A recorded inference request (``api.prediction_recorder``) of ``rows`` rows."""
        if not self.enabled:
            return
        ok = row.get("status") == "succeeded"
        self.counters.inference(
            row["tenant_id"],
            row["model_version_id"],
            row.get("transport") or "async",
            rows if ok else 0,
            row.get("inference_ms"),
            row.get("batch_size"),
        )

    def count_download(self, tenant_id: str, kind: str, size: int) -> None:
        if self.enabled:
            self.counters.add(tenant_id, usage.BYTES_DOWNLOADED, size, kind)

    # ---- the writer

    def start(self) -> None:
        if self.enabled:
            self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    async def flush(self, sample: bool = False) -> None:
        """Write the counters (and, when due or asked, a storage sample) in one transaction."""
        rows = self.counters.take()
        due = sample or time.monotonic() - self._sampled_at >= self.sample_s
        if not rows and not due:
            return
        try:
            async with self.db() as session:
                await session.run_sync(lambda s: usage.write(s, rows))
                if due:
                    await session.run_sync(usage.sample_storage)
                await session.commit()
            if due:
                self._sampled_at = time.monotonic()
        except Exception as exc:
            self.counters.give_back(rows)
            log.warning("could not write %d usage counters (kept for the next flush): %s", len(rows), exc)
