"""Requests held while a deployment at zero gets a replica: Knative's activator, inside each API process.

A request for a deployed version with no ready replica (``api.routing_table.NotReady`` with a
``pending`` target) is not refused: it joins the one :class:`Waiter` of that version. The first
request to create a waiter asks for a replica (``on_demand``: ``core.serving_signals.signal_demand``,
once per waiter, so a burst of requests costs one signal); every table refresh (each
``routing_refresh_s``, and at once on a replica notification) wakes every waiter, and each held
request looks at the table again: a ready replica sends it on, a failed load or an undeploy ends it,
anything else waits again until its own budget (the deployment's ``cold_start_timeout_ms``, from
the request's arrival) is spent. A waiter goes when its last request leaves.

The gate bounds how many requests one process holds (``cold_start_max_waiting``): past it a request
is refused at once (``Full``) rather than piling up in memory. It knows nothing of HTTP or of the
database: the router gives it the demand callback and does the routing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

# how often a held request checks that its client is still there (between wake-ups)
GONE_POLL_S = 0.25


class Full(Exception):
    """The process already holds as many requests as it may."""


class ClientGone(Exception):
    """The client of a held request went away: it stops waiting."""


@dataclass
class Waiter:
    """The requests of one version waiting for a replica; ``woken`` is replaced at each wake-up."""

    version_id: str
    model_id: str
    held: int = 0
    woken: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        self.woken.set()
        self.woken = asyncio.Event()


class ColdStartGate:
    """The process's waiters by version id, and the bound on the requests they hold."""

    def __init__(self, max_waiting: int, on_demand: Callable[[str], None]) -> None:
        self.max_waiting = max_waiting
        self.waiters: dict[str, Waiter] = {}
        self.held = 0
        self._on_demand = on_demand

    def wake_all(self) -> None:
        """Every held request looks at the routing table again (called after each refresh)."""
        for waiter in self.waiters.values():
            waiter.wake()

    async def wait(
        self,
        version_id: str,
        model_id: str,
        check: Callable[[], T | None],
        deadline: float,
        gone: Callable[[], bool] | None = None,
    ) -> T:
        """Hold the caller until ``check()`` gives a value (or raises), until ``deadline`` (monotonic).

        Raises :class:`Full` at once when the gate holds ``max_waiting`` requests, ``TimeoutError``
        past the deadline, :class:`ClientGone` once ``gone()`` says the client left.
        """
        if self.held >= self.max_waiting:
            raise Full(f"{self.held} requests already wait for a cold start in this process")
        waiter = self.waiters.get(version_id)
        if waiter is None:
            waiter = self.waiters[version_id] = Waiter(version_id, model_id)
            self._on_demand(model_id)
        waiter.held += 1
        self.held += 1
        try:
            while True:
                woken = waiter.woken  # taken before the check, so a wake-up in between is not missed
                found = check()
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                if gone is not None and gone():
                    raise ClientGone
                slice_s = min(left, GONE_POLL_S) if gone is not None else left
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(slice_s):
                        await woken.wait()
        finally:
            waiter.held -= 1
            self.held -= 1
            if waiter.held == 0 and self.waiters.get(version_id) is waiter:
                del self.waiters[version_id]
