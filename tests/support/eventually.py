"""``eventually``: wait until a condition holds, instead of sleeping and hoping.

Sync and async flavours share one contract: call ``predicate`` every ``interval_s`` until it
returns something truthy (that value is returned) or ``timeout`` passes, then fail with
``what`` and the last value seen, so a timed-out test says what it was waiting for. ``what``
may be a function, called only then, to describe state the predicate kept aside.

``eventually_async`` sleeps with ``asyncio.sleep``, so the event loop (and an API served on it)
keeps running while it waits; its predicate may be a coroutine function or a plain function.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


class NotYet(AssertionError):
    """The condition did not hold within the timeout."""


def _timed_out(timeout: float, what: str | Callable[[], str], predicate: object, value: object) -> NotYet:
    description = what() if callable(what) else what
    return NotYet(f"timed out after {timeout}s waiting for {description or predicate}; last value: {value!r}")


def eventually(
    predicate: Callable[[], T], timeout: float = 30.0, what: str | Callable[[], str] = "", interval_s: float = 0.1
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, predicate, value)
        time.sleep(interval_s)


# two signatures, so that mypy tells what a coroutine function's result is (it cannot from the union alone)
@overload
async def eventually_async(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = 30.0,
    what: str | Callable[[], str] = "",
    interval_s: float = 0.1,
) -> T: ...


@overload
async def eventually_async(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str | Callable[[], str] = "",
    interval_s: float = 0.1,
) -> T: ...


async def eventually_async(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float = 30.0,
    what: str | Callable[[], str] = "",
    interval_s: float = 0.1,
) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise _timed_out(timeout, what, predicate, value)
        await asyncio.sleep(interval_s)
