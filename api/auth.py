"""API-key authentication: ``Authorization: Bearer <key>`` → the key's tenant.

Keys are looked up by their sha256; a revoked or unknown key answers 401. The
key's ``last_used_at`` is written at most once per ``api_key_touch_interval_s`` so
that authentication does not turn every request into a database write.

Nor into a database read: a key the database accepted is remembered for
``api_key_cache_s`` (:class:`KeyCache`, in :class:`KnownKeys`). A revocation still
takes effect at once, in every API process: the revoking transaction announces the
key's hash on a Postgres channel (``core.api_keys.revocation_notice``), each API
process LISTENs to it on a connection of its own and reads what has arrived before
it answers from the cache, and while it is not listening it uses no cache at all.
Unknown and revoked keys are never cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
from aiohttp import web
from sqlalchemy import select, update

from api.context import ApiContext, context
from api.problems import Problem
from core.api_keys import REVOKED_CHANNEL, hash_key
from core.db import libpq_url
from core.models import ApiKey
from core.settings import Settings

log = logging.getLogger("maas.api.auth")

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="maas"'}
LISTEN_RETRY_S = 2.0
MAX_CACHED_KEYS = 10_000


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers=CHALLENGE)


@dataclass
class CachedKey:
    key_id: str
    tenant_id: str
    last_used_at: datetime | None  # as last read or written
    checked_at: float  # the clock's time when the database last accepted the key


class KeyCache:
    """Keys the database accepted less than ``ttl_s`` ago, by hash; at most ``max_entries``, the oldest go first."""

    def __init__(
        self, ttl_s: float, max_entries: int = MAX_CACHED_KEYS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[str, CachedKey] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key_hash: str) -> CachedKey | None:
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        if self.clock() - entry.checked_at >= self.ttl_s:
            del self._entries[key_hash]
            return None
        return entry

    def put(self, key_hash: str, key_id: str, tenant_id: str, last_used_at: datetime | None) -> None:
        if self.ttl_s <= 0:
            return
        self._entries.pop(key_hash, None)  # re-inserted last: the dict's order is the age order
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key_hash] = CachedKey(key_id, tenant_id, last_used_at, self.clock())

    def forget(self, key_hash: str) -> None:
        self._entries.pop(key_hash, None)

    def clear(self) -> None:
        self._entries.clear()


class KnownKeys:
    """The API process's :class:`KeyCache`, trusted only while revocations are being listened to."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.cache = KeyCache(settings.api_key_cache_s)
        self._connection: psycopg.AsyncConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._notices = 0  # revocation notices applied so far

    @property
    def listening(self) -> bool:
        return self._connection is not None

    @property
    def notices(self) -> int:
        """Revocation notices applied so far (after reading those that have arrived)."""
        self._read_revocations()
        return self._notices

    def start(self) -> None:
        if self.settings.api_key_cache_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._listen(), name="api-key-revocations")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._disconnect()

    def get(self, key_hash: str) -> CachedKey | None:
        """The cached key, once the revocations that reached this process are applied; None: ask the database."""
        if not self._read_revocations():
            return None
        return self.cache.get(key_hash)

    def mark(self) -> int:
        """Take it before reading a key from the database, and give it to :meth:`remember`."""
        return self.notices

    def remember(self, key_hash: str, key_id: str, tenant_id: str, last_used_at: datetime | None, mark: int) -> None:
        """Cache a key the database accepted, unless a revocation arrived since ``mark`` (it may be this key's)."""
        if self._read_revocations() and self._notices == mark:
            self.cache.put(key_hash, key_id, tenant_id, last_used_at)

    def forget(self, key_hash: str) -> None:
        self.cache.forget(key_hash)

    def _read_revocations(self) -> bool:
        """Apply every revocation notice already received, without waiting; False when not listening."""
        if self._connection is None:
            return False
        pgconn = self._connection.pgconn
        try:
            pgconn.consume_input()  # reads what the socket holds; never blocks
            while (notice := pgconn.notifies()) is not None:
                self.cache.forget(notice.extra.decode())
                self._notices += 1
        except psycopg.Error as exc:
            log.warning("lost the revocation channel (keys are checked in the database until it is back): %s", exc)
            self._connection = None
            self.cache.clear()
            return False
        return True

    async def _listen(self) -> None:
        """Keep a LISTEN connection open; on failure, stop trusting the cache and connect again."""
        while True:
            try:
                if self._connection is None:
                    connection = await psycopg.AsyncConnection.connect(
                        libpq_url(self.settings.service("database_url")),
                        autocommit=True,
                        connect_timeout=max(1, int(self.settings.readiness_timeout_s)),
                    )
                    await connection.execute(f"LISTEN {REVOKED_CHANNEL}")
                    self.cache.clear()  # revocations announced while nobody listened were missed
                    self._connection = connection
                # notices are read by requests; this only notices a closed connection early
                self._read_revocations()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot listen for API key revocations (retrying): %s", exc)
                await self._disconnect()
            await asyncio.sleep(LISTEN_RETRY_S)

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        self.cache.clear()
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()


async def authenticate(request: web.Request) -> str:
    """The tenant id of the request's API key, or a 401 Problem."""
    return await tenant_of(context(request), request.headers.get("Authorization", ""))


async def tenant_of(ctx: ApiContext, header: str) -> str:
    """The tenant id of an ``Authorization`` value (HTTP header or gRPC metadata), or a 401 Problem."""
    scheme, _, key = header.partition(" ")
    if not header:
        raise _unauthorized("missing Authorization header: send 'Authorization: Bearer <api key>'")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <api key>'")
    key_hash = hash_key(key.strip())
    now = datetime.now(UTC)
    interval = timedelta(seconds=ctx.settings.api_key_touch_interval_s)
    cached = ctx.keys.get(key_hash)
    if cached is not None:
        if cached.last_used_at is not None and now - cached.last_used_at < interval:
            return cached.tenant_id
        async with ctx.db() as session:
            touched = await session.execute(
                update(ApiKey).where(ApiKey.id == cached.key_id, ApiKey.revoked_at.is_(None)).values(last_used_at=now)
            )
            await session.commit()
        if touched.rowcount:
            cached.last_used_at = now
            return cached.tenant_id
        ctx.keys.forget(key_hash)  # revoked or deleted meanwhile: the full check below says which
    mark = ctx.keys.mark()
    async with ctx.db() as session:
        row = (
            await session.execute(
                select(ApiKey.id, ApiKey.tenant_id, ApiKey.revoked_at, ApiKey.last_used_at).where(
                    ApiKey.key_hash == key_hash
                )
            )
        ).first()
        if row is None:
            raise _unauthorized("unknown API key")
        if row.revoked_at is not None:
            raise _unauthorized("this API key was revoked")
        last_used_at = row.last_used_at
        if last_used_at is None or now - last_used_at >= interval:
            await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
            await session.commit()
            last_used_at = now
    ctx.keys.remember(key_hash, row.id, row.tenant_id, last_used_at, mark)
    return row.tenant_id
