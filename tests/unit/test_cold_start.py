"""Requests held for a cold start (api.cold_start): one waiter and one demand per version however many
requests arrive, released together by a wake-up that finds a replica, and refused past the budget, past
the bound on held requests, or once the client left."""

from __future__ import annotations

import asyncio
import time

import pytest

from api.cold_start import ClientGone, ColdStartGate, Full


def gate(max_waiting: int = 100) -> tuple[ColdStartGate, list[str]]:
    demanded: list[str] = []
    return ColdStartGate(max_waiting, demanded.append), demanded


async def test_a_burst_shares_one_waiter_asks_once_and_is_released_by_one_wake_up():
    cold, demanded = gate()
    replica: list[str] = []
    deadline = time.monotonic() + 10
    held = [
        asyncio.create_task(cold.wait("v1", "m1", lambda: replica[0] if replica else None, deadline)) for _ in range(32)
    ]
    await asyncio.sleep(0.05)
    assert demanded == ["m1"] and list(cold.waiters) == ["v1"] and cold.held == 32
    cold.wake_all()  # a refresh without a replica: everyone looks, everyone waits on
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in held)
    replica.append("server-a")
    cold.wake_all()
    assert await asyncio.gather(*held) == ["server-a"] * 32
    assert cold.waiters == {} and cold.held == 0


async def test_a_later_burst_asks_again_once_the_first_waiter_is_gone():
    cold, demanded = gate()
    deadline = time.monotonic() + 10
    assert await cold.wait("v1", "m1", lambda: "ready", deadline) == "ready"
    assert await cold.wait("v1", "m1", lambda: "ready", deadline) == "ready"
    assert demanded == ["m1", "m1"]


async def test_past_its_deadline_a_request_stops_waiting_and_leaves_no_waiter():
    cold, _ = gate()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await cold.wait("v1", "m1", lambda: None, started + 0.2)
    assert time.monotonic() - started >= 0.2
    assert cold.waiters == {} and cold.held == 0


async def test_each_request_keeps_its_own_deadline_on_a_shared_waiter():
    cold, demanded = gate()
    now = time.monotonic()
    early = asyncio.create_task(cold.wait("v1", "m1", lambda: None, now + 0.1))
    late = asyncio.create_task(cold.wait("v1", "m1", lambda: None, now + 5))
    with pytest.raises(TimeoutError):
        await early
    assert not late.done() and cold.held == 1
    late.cancel()
    with pytest.raises(asyncio.CancelledError):
        await late
    assert cold.waiters == {} and demanded == ["m1"]


async def test_past_the_bound_a_request_is_refused_at_once():
    cold, _ = gate(max_waiting=2)
    deadline = time.monotonic() + 10
    held = [asyncio.create_task(cold.wait("v1", "m1", lambda: None, deadline)) for _ in range(2)]
    await asyncio.sleep(0.01)
    with pytest.raises(Full):
        await cold.wait("v2", "m2", lambda: "ready", deadline)
    for task in held:
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)
    assert cold.held == 0


async def test_a_client_that_left_stops_waiting():
    cold, _ = gate()
    left: list[bool] = []
    task = asyncio.create_task(cold.wait("v1", "m1", lambda: None, time.monotonic() + 10, gone=lambda: bool(left)))
    await asyncio.sleep(0.05)
    left.append(True)
    started = time.monotonic()
    with pytest.raises(ClientGone):
        await task
    assert time.monotonic() - started < 1  # noticed within a poll, not at the deadline
    assert cold.waiters == {}


async def test_a_check_that_raises_ends_the_wait_with_its_error():
    cold, _ = gate()
    failed: list[bool] = []

    def check() -> str | None:
        if failed:
            raise RuntimeError("its load failed")
        return None

    task = asyncio.create_task(cold.wait("v1", "m1", check, time.monotonic() + 10))
    await asyncio.sleep(0.01)
    failed.append(True)
    cold.wake_all()
    with pytest.raises(RuntimeError, match="load failed"):
        await task
