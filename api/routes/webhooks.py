"""The tenant's webhook signing secret (Standard Webhooks ``whsec_…``) and its rotation."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from sqlalchemy.orm import Session

from api.context import context
from api.endpoints import Call, Endpoints
from core.models import WebhookSecret
from core.objects import WebhookSecretObject
from core.webhooks import get_or_create_secret, rotate_secret

webhooks = Endpoints("webhooks")


@webhooks.get(
    "/v1/webhooks/secret",
    summary="The secret that signs this tenant's webhooks",
    response=WebhookSecretObject,
)
async def get_webhook_secret(request: web.Request, call: Call[None, None]) -> WebhookSecretObject:
    return await _secret(request, call.tenant_id, get_or_create_secret)


@webhooks.post(
    "/v1/webhooks/secret/rotate",
    summary="Replace the signing secret; the old one keeps signing alongside for 24 hours",
    response=WebhookSecretObject,
)
async def rotate_webhook_secret(request: web.Request, call: Call[None, None]) -> WebhookSecretObject:
    return await _secret(request, call.tenant_id, rotate_secret)


async def _secret(
    request: web.Request, tenant_id: str, get: Callable[[Session, str], WebhookSecret]
) -> WebhookSecretObject:
    async with context(request).db() as session:
        row = await session.run_sync(lambda s: get(s, tenant_id))
        await session.commit()
        await session.refresh(row)
        return WebhookSecretObject.model_validate(row)
