"""When to send a call again, and after how long: the one retry policy of the sync and async clients.

A 429 or 503 means the call was not handled, so it is repeated after ``Retry-After`` (seconds or an
HTTP date) or, without one, after an exponential backoff with jitter; so is a 409 that carries
``Retry-After`` (the API's answer while the first request with the same ``Idempotency-Key`` is still
being handled). A connection error is repeated only for calls that are safe to repeat: reads,
``PUT``/``DELETE``, and creates sent with an ``Idempotency-Key``. Pure: no I/O, no clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

RETRY_STATUSES = frozenset({429, 503})


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


@dataclass(frozen=True)
class RetryPolicy:
    """``max_retries`` repeats of one call at most; backoff ``backoff_s * 2**attempt`` capped at ``max_backoff_s``,
    with full jitter; a ``Retry-After`` longer than ``max_retry_after_s`` is not waited for (the error is raised)."""

    max_retries: int = 3
    backoff_s: float = 0.5
    max_backoff_s: float = 8.0
    max_retry_after_s: float = 60.0

    def backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_backoff_s, self.backoff_s * 2**attempt))

    def after_status(self, attempt: int, status: int, retry_after: float | None) -> float | None:
        """Seconds to wait before repeating a call answered ``status``; None: do not repeat it."""
        if attempt >= self.max_retries:
            return None
        if status in RETRY_STATUSES or (status == 409 and retry_after is not None):
            if retry_after is None:
                return self.backoff(attempt)
            return retry_after if retry_after <= self.max_retry_after_s else None
        return None

    def after_connection_error(self, attempt: int, idempotent: bool) -> float | None:
        """Seconds to wait before repeating a call whose connection failed; None: do not repeat it."""
        if not idempotent or attempt >= self.max_retries:
            return None
        return self.backoff(attempt)


NO_RETRIES = RetryPolicy(max_retries=0)
