"""The background task of a buffered writer: call its ``flush`` every interval, early when woken, and once more on stop.

Owns the task's lifecycle and nothing else: what a flush writes, and what it keeps when a write
fails, belong to the writer (``api.usage_meter``, ``api.prediction_recorder``). A flush that
raises is logged and the loop goes on, so one bad flush never stops the writes that follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("maas.api.periodic_flush")


class PeriodicFlush:
    """Calls ``flush`` every ``interval_s`` seconds, or as soon as :meth:`wake` is called, until ``stop``."""

    def __init__(self, flush: Callable[[], Awaitable[Any]], interval_s: float, name: str) -> None:
        self.flush = flush
        self.interval_s = interval_s
        self.name = name
        self._due = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    def wake(self) -> None:
        """Flush now rather than at the end of the interval (a buffer is full)."""
        self._due.set()

    async def stop(self) -> None:
        """Stop the loop and flush what is left; nothing to do if it never started."""
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None
        await self._flush_logged()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.interval_s):
                    await self._due.wait()
            self._due.clear()
            await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:
            log.exception("%s: flush failed", self.name)
