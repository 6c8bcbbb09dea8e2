"""What the API's handlers share, opened on startup and closed on shutdown (see ``api.app``)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from celery import Celery
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from api.metrics import ApiMetrics
from core import dispatch
from core.artifact_store import ArtifactStore
from core.settings import Settings
from job_types.registry import JobTypes

if TYPE_CHECKING:
    from api.auth import KnownKeys
    from api.rate_limits import RateLimiter
    from api.usage_meter import UsageMeter


@dataclass
class ApiContext:
    settings: Settings
    engine: AsyncEngine
    db: async_sessionmaker
    store: ArtifactStore
    celery: Celery
    metrics: ApiMetrics
    keys: KnownKeys
    job_types: JobTypes
    # tenant limits (api/rate_limits.py) and usage metering (api/usage_meter.py)
    rates: RateLimiter
    usage: UsageMeter


CONTEXT = web.AppKey("context", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]


async def commit_and_send(ctx: ApiContext, session: AsyncSession) -> None:
    """Commit, then publish the broker messages the transaction implied (see ``core.dispatch``)."""
    await session.commit()
    messages = dispatch.take(session.sync_session)
    if messages:
        await asyncio.to_thread(dispatch.send, ctx.celery, messages)
