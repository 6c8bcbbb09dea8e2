"""Records every synchronous inference request as a ``predictions`` row, without a database write per request.

The API process owns the records (it sees every outcome, including requests refused before
any model server ran them): a request appends a row to an in-memory buffer and goes on; a
background task inserts the buffer in one multi-row INSERT every ``prediction_flush_s``, or as
soon as ``prediction_flush_rows`` are waiting. Postgres then costs one round trip per flush
instead of one per request.

Accepted risk: rows still in the buffer are lost if the API process dies (a clean shutdown
flushes them). While Postgres is unreachable rows are kept and retried, up to
``prediction_buffer_max_rows``; past that the oldest are dropped and counted in
``dropped`` — the service keeps answering rather than failing requests over bookkeeping.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import async_sessionmaker

from api.periodic_flush import PeriodicFlush
from core.ids import new_id
from core.models import Prediction
from core.settings import Settings

log = logging.getLogger("maas.api.predictions")


class RecordBuffer:
    """A bounded FIFO of rows waiting to be inserted; the oldest give way when it is full."""

    def __init__(self, max_rows: int) -> None:
        self.max_rows = max_rows
        self.dropped = 0
        self._rows: deque[dict[str, Any]] = deque()

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        self._trim()

    def take(self, limit: int) -> list[dict[str, Any]]:
        """Remove and return up to ``limit`` of the oldest rows."""
        return [self._rows.popleft() for _ in range(min(limit, len(self._rows)))]

    def give_back(self, rows: Iterable[dict[str, Any]]) -> None:
        """Put rows whose insert failed back in front, to be tried again."""
        self._rows.extendleft(reversed(list(rows)))
        self._trim()

    def _trim(self) -> None:
        while len(self._rows) > self.max_rows:
            self._rows.popleft()
            self.dropped += 1


def prediction_row(
    *,
    tenant_id: str,
    model_version_id: str,
    started_at: datetime,
    error: dict[str, Any] | None = None,
    stats: dict[str, Any] | None = None,
    transport: str = "http",
) -> dict[str, Any]:
    """The ``predictions`` row of one synchronous request (over ``transport``): succeeded, or failed with ``error``."""
    stats = stats or {}
    return {
        "id": new_id("prediction"),
        "tenant_id": tenant_id,
        "model_version_id": model_version_id,
        "status": "failed" if error else "succeeded",
        "is_async": False,
        "transport": transport,
        "input": None,
        "output": None,
        "error": error,
        "queue_ms": stats.get("queue_ms"),
        "inference_ms": stats.get("inference_ms"),
        "batch_id": stats.get("batch_id"),
        "batch_size": stats.get("batch_size"),
        "webhook": None,
        "webhook_events_filter": [],
        "created_at": started_at,
        "completed_at": datetime.now(UTC),
    }


class PredictionRecorder:
    """The buffer and the task that flushes it; ``start`` and ``stop`` from the app's cleanup context."""

    def __init__(self, settings: Settings, db: async_sessionmaker) -> None:
        self._db = db
        self._batch_rows = settings.prediction_flush_rows
        self.buffer = RecordBuffer(settings.prediction_buffer_max_rows)
        self._writer = PeriodicFlush(self.flush, settings.prediction_flush_s, name="prediction-recorder")
        # told of every record with its request's rows (the usage meter, api/usage_meter.py)
        self.on_record: Callable[[dict[str, Any], int], None] | None = None

    def record(self, row: dict[str, Any], rows: int = 0) -> None:
        """Keep ``row`` for the next insert; ``rows``: the request's first dimension (0 when it failed)."""
        if self.on_record is not None:
            self.on_record(row, rows)
        self.buffer.add(row)
        if len(self.buffer) >= self._batch_rows:
            self._writer.wake()

    def start(self) -> None:
        self._writer.start()

    async def stop(self) -> None:
        await self._writer.stop()

    async def flush(self) -> int:
        """Insert everything buffered now; returns the rows written. Failed rows go back to the buffer."""
        written = 0
        while len(self.buffer):
            rows = self.buffer.take(self._batch_rows)
            try:
                async with self._db() as session:
                    await session.execute(insert(Prediction), rows)
                    await session.commit()
            except Exception as exc:
                self.buffer.give_back(rows)
                log.warning("could not record %d predictions (kept for the next flush): %s", len(rows), exc)
                break
            written += len(rows)
        return written
