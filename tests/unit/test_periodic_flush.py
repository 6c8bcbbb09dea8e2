"""The buffered writers' background task, on a real event loop: it flushes on its interval and when
woken, once more on stop, and a flush that raises does not end the loop."""

from __future__ import annotations

import asyncio

import pytest

from api.periodic_flush import PeriodicFlush


class Writer:
    """Counts its flushes; the ones numbered in ``failing`` raise."""

    def __init__(self, failing: tuple[int, ...] = ()) -> None:
        self.calls = 0
        self.failing = failing
        self.flushed = asyncio.Event()

    async def flush(self) -> None:
        self.calls += 1
        self.flushed.set()
        if self.calls in self.failing:
            raise RuntimeError(f"flush {self.calls} fails")

    async def wait_for(self, calls: int) -> None:
        async with asyncio.timeout(5):
            while self.calls < calls:
                self.flushed.clear()
                await self.flushed.wait()


async def test_it_flushes_on_its_interval_and_once_more_on_stop():
    writer = Writer()
    loop = PeriodicFlush(writer.flush, interval_s=0.01, name="test")
    loop.start()
    await writer.wait_for(3)
    await loop.stop()
    stopped_at = writer.calls
    await asyncio.sleep(0.05)
    assert writer.calls == stopped_at  # the loop is gone; the last call was stop's own flush


async def test_stop_flushes_what_is_left_even_before_the_first_interval():
    writer = Writer()
    loop = PeriodicFlush(writer.flush, interval_s=3600, name="test")
    loop.start()
    await asyncio.sleep(0)
    assert writer.calls == 0
    await loop.stop()
    assert writer.calls == 1


async def test_wake_flushes_before_the_interval_ends():
    writer = Writer()
    loop = PeriodicFlush(writer.flush, interval_s=3600, name="test")
    loop.start()
    loop.wake()
    await writer.wait_for(1)
    await loop.stop()


async def test_a_failing_flush_is_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture):
    writer = Writer(failing=(1, 2))
    loop = PeriodicFlush(writer.flush, interval_s=0.01, name="test-writer")
    loop.start()
    await writer.wait_for(3)
    await loop.stop()
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"][:2] == ["test-writer: flush failed"] * 2


async def test_a_loop_never_started_does_not_flush_on_stop():
    writer = Writer()
    await PeriodicFlush(writer.flush, interval_s=0.01, name="test").stop()
    assert writer.calls == 0
