"""The tenant's deployments' recent traffic: ``GET /v1/deployments/stats?window_minutes=5``.

One row per deployment: requests per minute, error rate, p50/p99 latency and batch sizes over
the last ``window_minutes``, from the recorded synchronous predictions (``core.deployment_stats``).
The dashboard's deployments page polls it; unlike ``/metrics`` it needs only the tenant's key
and shows only the tenant's models.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiohttp import web
from pydantic import Field

from api.context import context
from api.endpoints import Call, Endpoints
from core import deployment_stats as stats_service
from core.objects import DeploymentStatsList, DeploymentStatsObject
from core.spec_kit import StrictModel

deployment_stats = Endpoints("deployments")


class DeploymentStatsQuery(StrictModel):
    window_minutes: int = Field(default=5, ge=1, le=1440, description="how many minutes back to count, up to now")


@deployment_stats.get(
    "/v1/deployments/stats",
    summary="Traffic, error rate, p50/p99 latency and batch sizes of this tenant's deployments over the last minutes",
    query=DeploymentStatsQuery,
    response=DeploymentStatsList,
)
async def get_deployment_stats(request: web.Request, call: Call[None, DeploymentStatsQuery]) -> DeploymentStatsList:
    ctx = context(request)
    window = timedelta(minutes=call.query.window_minutes)
    now = datetime.now(UTC)
    async with ctx.db() as session:
        found = await session.run_sync(lambda s: stats_service.deployment_stats(s, call.tenant_id, now, window))
    return DeploymentStatsList(
        window_minutes=call.query.window_minutes,
        since=now - window,
        data=[
            DeploymentStatsObject(
                model=row.model,
                version=row.version,
                requests=row.requests,
                requests_per_minute=round(row.per_minute(window), 3),
                errors=row.errors,
                error_rate=None if row.error_rate is None else round(row.error_rate, 4),
                latency_p50_ms=row.latency_p50_ms,
                latency_p99_ms=row.latency_p99_ms,
                mean_batch_size=row.mean_batch_size,
                max_batch_size=row.max_batch_size,
            )
            for row in found
        ],
    )
