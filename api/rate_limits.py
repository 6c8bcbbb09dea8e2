"""Rate limits per API key on inference and on create calls, from the buckets every API process shares.

Each request takes one token from its key's bucket of its class (``inference``: /v2 infer, gRPC
ModelInfer, POST /v1/predictions; ``creates``: the other POST/PUT creates under /v1). Tokens come
from the shared PostgreSQL bucket (``core.rate_buckets``, where the reason for PostgreSQL and
for leases is written) in leases held in memory, so most requests cost a dict lookup; the next
lease is fetched in the background once a quarter of one is left. A refused key is remembered
until its next token is due, so a flood of refused requests does not reach the database either.

Every limited answer carries ``RateLimit-Limit`` (the bucket, = the per-minute limit),
``RateLimit-Remaining`` (the shared bucket after this process's last lease, plus what this
process still holds) and ``RateLimit-Reset`` (seconds until the bucket is full); a refusal is a
429 problem with ``Retry-After``, ``RESOURCE_EXHAUSTED`` over gRPC. The limit is the tenant's
``inference_per_min`` / ``creates_per_min`` quota (``core.quotas``), re-read every
``LIMITS_TTL_S``. While PostgreSQL cannot be reached, a process grants its leases itself (fails open,
logged): bookkeeping never fails a request, as ``api.prediction_recorder`` does not.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from aiohttp import web
from sqlalchemy.ext.asyncio import async_sessionmaker

from api.context import context
from api.problems import TYPE_BASE, Problem
from core import quotas
from core.api_keys import hash_key
from core.rate_buckets import TAKE, Grant, lease_size, take_params
from core.settings import Settings

log = logging.getLogger("maas.api.rate_limits")

INFERENCE = "inference"
CREATES = "creates"
QUOTA_OF = {INFERENCE: quotas.INFERENCE_PER_MIN, CREATES: quotas.CREATES_PER_MIN}
LIMITS_TTL_S = 10.0
NOT_CREATES = ("/cancel", "/rotate")


def rate_class(method: str, path: str) -> str | None:
    """Which bucket a route's requests take from (a route template or a path), or None."""
    if method != "POST" and method != "PUT":
        return None
    if path.startswith("/v2/") and path.endswith("/infer"):
        return INFERENCE
    if path == "/v1/predictions":
        return INFERENCE
    if path.startswith("/v1/") and not path.endswith(NOT_CREATES) and path != "/v1/usage":
        return CREATES
    return None


def bucket_key(authorization: str, kind: str) -> str:
    """The shared bucket of an API key (its hash, never the key) and a rate class."""
    return f"{kind}:{hash_key(authorization.partition(' ')[2].strip())[:40]}"


@dataclass
class Decision:
    """One request's answer from the limiter."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float = 0.0

    def headers(self) -> dict[str, str]:
        headers = {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(max(0, self.remaining)),
            "RateLimit-Reset": str(math.ceil(self.reset_s)),
        }
        if not self.allowed:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after_s)))
        return headers

    def problem(self, quota: str) -> Problem:
        retry = self.headers()["Retry-After"]
        return Problem(
            429,
            f"rate limit {quota} is {self.limit} per minute for this API key; retry in {retry} s",
            type_=TYPE_BASE + "rate-limited",
            headers=self.headers(),
            quota=quota,
            limit=self.limit,
            used=self.limit - max(0, self.remaining),
        )


@dataclass
class _Lease:
    tokens: int = 0  # held by this process, to spend without asking the database
    low_water: int = 0  # at or below it, the next lease is fetched in the background
    grant: Grant | None = None
    denied_until: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    renewing: asyncio.Task[None] | None = None


class RateLimiter:
    """This API process's leases and its cache of the tenants' limits.

    A request waits for the database only when its process holds no token of its key (the first
    request, or a key spending faster than its leases come): a lease that runs low is renewed ahead,
    in the background, and a stale limit is re-read the same way. Tokens a process holds stay
    spendable (they left the shared bucket when leased): at most one lease per key and process
    waits unused, about ``rate_limit_lease_s`` of the key's rate."""

    def __init__(self, settings: Settings, db: async_sessionmaker) -> None:
        self.settings = settings
        self.db = db
        self.enabled = settings.rate_limits_enabled
        self._leases: dict[str, _Lease] = {}
        self._limits: dict[tuple[str, str], tuple[int, float]] = {}  # (tenant, quota) → (value, read at)
        self._reading: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.leases_taken = 0

    async def _limit(self, tenant_id: str, quota: str) -> int:
        cached = self._limits.get((tenant_id, quota))
        if cached is None:
            await self._read_limit(tenant_id, quota)
            return self._limits[(tenant_id, quota)][0]
        if time.monotonic() - cached[1] >= LIMITS_TTL_S and (tenant_id, quota) not in self._reading:
            task = asyncio.get_running_loop().create_task(self._read_limit(tenant_id, quota))
            self._reading[(tenant_id, quota)] = task
            task.add_done_callback(lambda _: self._reading.pop((tenant_id, quota), None))
        return cached[0]

    async def _read_limit(self, tenant_id: str, quota: str) -> None:
        cached = self._limits.get((tenant_id, quota))
        try:
            async with self.db() as session:
                value = await session.run_sync(lambda s: quotas.effective_quota(s, tenant_id, quota, self.settings))
        except Exception as exc:  # the database is away: the last value read, else the default
            log.warning(
                "cannot read %s of %s (using %s): %s", quota, tenant_id, "the last" if cached else "the default", exc
            )
            value = cached[0] if cached else int(quotas.default_quota(self.settings, quota) or 0)
        self._limits[(tenant_id, quota)] = (value, time.monotonic())

    async def take(self, tenant_id: str, authorization: str, kind: str) -> Decision | None:
        """Take one token for the API key in ``authorization``; None when limits are off."""
        if not self.enabled:
            return None
        quota = QUOTA_OF[kind]
        per_min = await self._limit(tenant_id, quota)
        key = bucket_key(authorization, kind)
        lease = self._leases.setdefault(key, _Lease())
        now = time.monotonic()
        if lease.tokens <= 0:
            if now < lease.denied_until and lease.grant is not None:
                return self._refused(lease.grant, per_min, lease.denied_until - now)
            async with lease.lock:  # one lease at a time per key: the others wait for it and share it
                if lease.tokens <= 0:
                    await self._renew(lease, key, per_min)
            if lease.tokens <= 0:
                assert lease.grant is not None
                return self._refused(lease.grant, per_min, lease.grant.retry_after_s())
        elif lease.tokens <= lease.low_water and lease.renewing is None:
            lease.renewing = asyncio.get_running_loop().create_task(self._renew_ahead(lease, key, per_min))
        lease.tokens -= 1
        grant = lease.grant
        assert grant is not None
        return Decision(True, per_min, int(grant.left) + lease.tokens, grant.reset_s())

    async def _renew_ahead(self, lease: _Lease, key: str, per_min: int) -> None:
        try:
            async with lease.lock:
                await self._renew(lease, key, per_min)
        finally:
            lease.renewing = None

    async def _renew(self, lease: _Lease, key: str, per_min: int) -> None:
        """Add a lease's tokens to what this process holds."""
        want = lease_size(per_min, self.settings.rate_limit_lease_s)
        try:
            async with self.db() as session:
                row = (await session.execute(TAKE, take_params(key, per_min, want))).one()
                await session.commit()
            granted, left = int(row.granted), float(row.tokens)
        except Exception as exc:
            # the shared bucket cannot be reached: this process lets one lease through on its own rather
            # than fail requests over bookkeeping (as api.prediction_recorder keeps serving)
            log.warning("cannot take tokens from the shared bucket (one lease granted locally): %s", exc)
            granted, left = want, float(per_min - want)
        self.leases_taken += 1
        now = time.monotonic()
        lease.grant = Grant(granted, left, float(per_min), per_min / 60.0)
        lease.tokens += granted
        lease.low_water = want // 4
        lease.denied_until = now + lease.grant.retry_after_s() if lease.tokens <= 0 else 0.0

    @staticmethod
    def _refused(grant: Grant, per_min: int, retry_after_s: float) -> Decision:
        return Decision(False, per_min, int(grant.left), grant.reset_s(), retry_after_s)


async def limit_request(request: web.Request, tenant_id: str, method: str, route: str) -> dict[str, str]:
    """Take a token for an HTTP request on a limited route: its rate-limit headers, or a 429 Problem."""
    kind = rate_class(method, route)
    if kind is None:
        return {}
    decision = await context(request).rates.take(tenant_id, request.headers.get("Authorization", ""), kind)
    if decision is None:
        return {}
    if not decision.allowed:
        raise decision.problem(QUOTA_OF[kind])
    return decision.headers()
