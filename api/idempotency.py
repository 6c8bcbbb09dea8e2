"""``Idempotency-Key`` on creates, as Stripe does it.

The first request with a key claims it (a committed row). A retry with the same
key and the same request replays the first response; with another request it is
422; while the first is still being handled it is 409. A create handler records
its response in the same transaction as the object it creates (``Claim.record``),
so a crash can never leave an object without its replay or the other way round.
A request that fails releases its claim, so the client can retry with the key.

A key is 1-255 printable ASCII characters (``KEY_PATTERN``, stated in the OpenAPI document);
any other is a 400 naming the header, checked before the body is read (:func:`header_problem`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from api.context import ApiContext
from api.problems import Problem
from core.models import IdempotencyKey

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
_KEY = re.compile(KEY_PATTERN)


@dataclass
class Claim:
    tenant_id: str
    key: str
    recorded: bool = False

    def record(self, session: Session, status: int, body: dict[str, Any]) -> None:
        """Store the response to replay, in the caller's (synchronous) transaction."""
        session.execute(
            update(IdempotencyKey)
            .where(IdempotencyKey.tenant_id == self.tenant_id, IdempotencyKey.key == self.key)
            .values(response_status=status, response_body=body)
        )
        self.recorded = True


def _fingerprint(method: str, path: str, body: bytes | None) -> str:
    digest = hashlib.sha256(f"{method} {path}\n".encode())
    if body:
        with contextlib.suppress(ValueError):  # the same JSON, other spacing or key order: the same request
            body = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
        digest.update(body)
    return digest.hexdigest()


def replay(status: int, body: dict[str, Any] | None) -> web.Response:
    """The recorded first response (``status`` and ``body`` of an IdempotencyKey row), again."""
    return web.json_response(body, status=status, headers={"Idempotent-Replayed": "true"})


def header_problem(request: web.Request) -> Problem | None:
    """The 400 of a key that is not 1-255 printable ASCII characters; None when absent or fine."""
    key = request.headers.get(HEADER)
    if key is None or _KEY.match(key):
        return None
    detail = f"the {HEADER} header must be 1-255 printable ASCII characters (no spaces); got {len(key)} characters"
    return Problem(400, detail, errors=[{"header": HEADER, "detail": detail}])


async def claim(
    ctx: ApiContext, request: web.Request, tenant_id: str, raw_body: bytes | None
) -> Claim | web.Response | None:
    """None without a key; a Claim to proceed; or the replayed first response."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if (problem := header_problem(request)) is not None:
        raise problem
    fingerprint = _fingerprint(request.method, request.path, raw_body)
    now = datetime.now(UTC)
    async with ctx.db() as session:
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.tenant_id == tenant_id,
                IdempotencyKey.key == key,
                IdempotencyKey.expires_at < now,
            )
        )
        inserted = await session.scalar(
            insert(IdempotencyKey)
            .values(
                tenant_id=tenant_id,
                key=key,
                method=request.method,
                path=request.path,
                request_sha256=fingerprint,
                expires_at=now + timedelta(seconds=ctx.settings.idempotency_key_ttl_s),
            )
            .on_conflict_do_nothing()
            .returning(IdempotencyKey.key)
        )
        await session.commit()
        if inserted is not None:
            return Claim(tenant_id=tenant_id, key=key)
        row = await session.scalar(
            select(IdempotencyKey).where(IdempotencyKey.tenant_id == tenant_id, IdempotencyKey.key == key)
        )
    if row is None:  # expired and deleted by a concurrent request in between: treat as in flight
        raise Problem(
            409, f"a request with this {HEADER} is being handled; retry shortly", headers={"Retry-After": "1"}
        )
    if row.request_sha256 != fingerprint:
        raise Problem(
            422,
            f"this {HEADER} was already used with a different request",
            type_="https://maas.dev/problems/idempotency-key-reused",
        )
    if row.response_status is None:
        raise Problem(
            409,
            f"a request with this {HEADER} is still being handled; retry shortly",
            headers={"Retry-After": "1"},
        )
    return replay(row.response_status, row.response_body)


async def finish(ctx: ApiContext, claim_: Claim, response: web.StreamResponse | None, body: Any) -> None:
    """Record a response the handler did not record itself, or release the claim after a failure."""
    async with ctx.db() as session:
        if response is not None and body is not None and not claim_.recorded:
            await session.run_sync(lambda s: claim_.record(s, response.status, body))
        elif not claim_.recorded:
            await session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.tenant_id == claim_.tenant_id,
                    IdempotencyKey.key == claim_.key,
                    IdempotencyKey.response_status.is_(None),
                )
            )
        await session.commit()
