"""Token buckets shared by every API process, kept in PostgreSQL (``rate_buckets``), taken in leases.

Why PostgreSQL and not Redis: PostgreSQL is always there (the broker may be RabbitMQ, and the
embedded stack's Redis is only a broker), and a bucket is one row updated by one statement.
Why leases: an API process does not ask the database for each request. It takes a *lease* of
up to ``rate * lease_s`` tokens in one UPDATE and spends it from memory (``api.rate_limits``);
at 1000 requests a second and a 0.1 s lease that is ten small updates a second per key and
process, fetched in the background before the last one runs out. The bucket itself is exact:
tokens are only ever handed out once, so every process together never passes the limit; what a
process holds and does not use is at most one lease per key (``rate * lease_s`` tokens).

The bucket holds at most ``capacity`` tokens (the per-minute limit: a full minute's burst after a
quiet minute) and refills at ``capacity / 60`` tokens a second, on the database's clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import text

# one statement: refill by the time since the last touch, grant up to :want whole tokens, keep the rest
# (every SET expression reads the row as it was, so ``granted`` and ``tokens`` see the same refill)
_AVAILABLE = "least(:capacity, b.tokens + :rate * greatest(0, extract(epoch FROM now() - b.updated_at)))"
TAKE = text(
    f"""
    INSERT INTO rate_buckets AS b (key, tokens, granted, updated_at)
    VALUES (:key, :capacity - least(:want, floor(:capacity)), least(:want, floor(:capacity)), now())
    ON CONFLICT (key) DO UPDATE SET
        tokens = {_AVAILABLE} - least(:want, floor({_AVAILABLE})),
        granted = least(:want, floor({_AVAILABLE})),
        updated_at = now()
    RETURNING granted, tokens
    """
)


@dataclass(frozen=True)
class Grant:
    """What one lease got: ``tokens`` to spend, and the bucket's ``left`` after it."""

    tokens: int
    left: float
    capacity: float
    rate_per_s: float

    def reset_s(self) -> float:
        """Seconds until the bucket is full again (RateLimit-Reset)."""
        return (self.capacity - self.left) / self.rate_per_s if self.rate_per_s > 0 else 0.0

    def retry_after_s(self) -> float:
        """Seconds until one whole token is there (Retry-After when nothing was granted)."""
        if self.rate_per_s <= 0:
            return 60.0
        return max(0.0, (1.0 - self.left) / self.rate_per_s)


def lease_size(per_min: int, lease_s: float) -> int:
    """Tokens one lease asks for: ``lease_s`` of refill, at least one, at most the bucket."""
    return max(1, min(per_min, math.ceil(per_min / 60.0 * lease_s)))


def take_params(key: str, per_min: int, want: int) -> dict[str, object]:
    """The parameters of ``TAKE``; its row (granted, tokens) gives ``Grant(granted, tokens, per_min, per_min / 60)``."""
    return {"key": key, "capacity": float(per_min), "rate": per_min / 60.0, "want": want}
