"""API-key authentication: ``Authorization: Bearer <key>`` → the key's tenant.

Keys are looked up by their sha256; a revoked or unknown key answers 401. The
key's ``last_used_at`` is written at most once per ``api_key_touch_interval_s`` so
that authentication does not turn every request into a database write.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web
from sqlalchemy import select, update

from api.context import context
from api.problems import Problem
from core.api_keys import hash_key
from core.models import ApiKey

CHALLENGE = {"WWW-Authenticate": 'Bearer realm="maas"'}


def _unauthorized(detail: str) -> Problem:
    return Problem(401, detail, headers=CHALLENGE)


async def authenticate(request: web.Request) -> str:
    """The tenant id of the request's API key, or a 401 Problem."""
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    if not header:
        raise _unauthorized("missing Authorization header: send 'Authorization: Bearer <api key>'")
    if scheme.lower() != "bearer" or not key.strip():
        raise _unauthorized("the Authorization header must be 'Bearer <api key>'")
    ctx = context(request)
    now = datetime.now(UTC)
    async with ctx.db() as session:
        row = (
            await session.execute(
                select(ApiKey.id, ApiKey.tenant_id, ApiKey.revoked_at, ApiKey.last_used_at).where(
                    ApiKey.key_hash == hash_key(key.strip())
                )
            )
        ).first()
        if row is None:
            raise _unauthorized("unknown API key")
        if row.revoked_at is not None:
            raise _unauthorized("this API key was revoked")
        interval = timedelta(seconds=ctx.settings.api_key_touch_interval_s)
        if row.last_used_at is None or now - row.last_used_at >= interval:
            await session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
            await session.commit()
    return row.tenant_id
