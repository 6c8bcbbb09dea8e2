"""The tenant's webhook signing secret (Standard Webhooks ``whsec_…``) and its rotation."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from aiohttp import web
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from api.context import context
from api.endpoints import Call, Endpoints
from core.models import WebhookSecret
from core.webhooks import ROTATION_OVERLAP, get_or_create_secret, rotate_secret

webhooks = Endpoints("webhooks")


class WebhookSecretObject(BaseModel):
    object: str = "webhook_secret"
    key: str = Field(description="verify deliveries with this secret (Standard Webhooks)")
    created_at: datetime
    rotated_at: datetime | None
    previous_key_valid_until: datetime | None = Field(
        description="after a rotation, deliveries carry a signature with the old key too until then"
    )


def _render(row: WebhookSecret) -> WebhookSecretObject:
    return WebhookSecretObject(
        key=row.secret,
        created_at=row.created_at,
        rotated_at=row.rotated_at,
        previous_key_valid_until=row.rotated_at + ROTATION_OVERLAP if row.rotated_at else None,
    )


@webhooks.get(
    "/v1/webhooks/secret",
    summary="The secret that signs this tenant's webhooks",
    response=WebhookSecretObject,
)
async def get_webhook_secret(request: web.Request, call: Call) -> WebhookSecretObject:
    return await _secret(request, call.tenant_id, get_or_create_secret)


@webhooks.post(
    "/v1/webhooks/secret/rotate",
    summary="Replace the signing secret; the old one keeps signing alongside for 24 hours",
    response=WebhookSecretObject,
)
async def rotate_webhook_secret(request: web.Request, call: Call) -> WebhookSecretObject:
    return await _secret(request, call.tenant_id, rotate_secret)


async def _secret(
    request: web.Request, tenant_id: str, get: Callable[[Session, str], WebhookSecret]
) -> WebhookSecretObject:
    async with context(request).db() as session:
        row = await session.run_sync(lambda s: get(s, tenant_id))
        await session.commit()
        await session.refresh(row)
        return _render(row)
