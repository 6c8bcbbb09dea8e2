"""What the API's handlers share, opened on startup and closed on shutdown (see ``api.app``)."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from api.metrics import ApiMetrics
from core.artifact_store import ArtifactStore
from core.settings import Settings


@dataclass
class ApiContext:
    settings: Settings
    engine: AsyncEngine
    db: async_sessionmaker
    store: ArtifactStore
    metrics: ApiMetrics


CONTEXT = web.AppKey("context", ApiContext)


def context(request: web.Request) -> ApiContext:
    return request.app[CONTEXT]
