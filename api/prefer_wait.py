"""``Prefer: wait=N`` (RFC 7240), as Replicate uses it: hold a create or a get until the object
reaches a terminal status or N seconds (capped by ``max_wait_s``) pass."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from api.endpoints import Call
from core.job_states import TERMINAL

T = TypeVar("T")
POLL_S = 0.1


def prefer_wait(request: web.Request, cap_s: float) -> float | None:
    """Seconds asked for with ``Prefer: wait=N``, capped; None when not asked."""
    match = re.search(r"(?:^|[,;\s])wait\s*=\s*(\d+(?:\.\d+)?)", request.headers.get("Prefer", ""))
    return min(float(match.group(1)), cap_s) if match else None


async def hold(
    request: web.Request,
    call: Call[Any, Any],
    cap_s: float,
    current: T,
    status: Callable[[T], str],
    reload: Callable[[], Awaitable[T]],
) -> T:
    """``current``, or a newer state of it once terminal, when the request asked to wait."""
    wait_s = prefer_wait(request, cap_s)
    if wait_s is None:
        return current
    call.response_headers["Preference-Applied"] = f"wait={wait_s:g}"
    deadline = time.monotonic() + wait_s
    while status(current) not in TERMINAL and time.monotonic() < deadline:
        await asyncio.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        current = await reload()
    return current
