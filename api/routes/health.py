"""Operations endpoints: ``/healthz`` (process up), ``/readyz`` (dependencies reachable),
``/metrics`` (Prometheus) and ``/openapi.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import web
from kombu import Connection
from kombu.exceptions import ChannelError
from pydantic import BaseModel, Field
from sqlalchemy import text

from api.context import ApiContext, context
from api.endpoints import Call, Endpoints
from api.inference_router import ROUTER
from api.openapi import ENDPOINT_TABLES, openapi_document
from api.problems import Problem
from core.jobs import counts_by_status as job_counts_by_status

log = logging.getLogger("maas.api")

health = Endpoints("operations")


class Health(BaseModel):
    status: str = Field(description="`ok` while the process answers")


class Check(BaseModel):
    ok: bool = Field(description="the dependency answered in time")
    latency_ms: float = Field(description="how long it took to answer, in milliseconds")
    error: str | None = Field(default=None, description="why it did not; null when it did")


class Readiness(BaseModel):
    status: str = Field(description="`ready` when every dependency answered")
    checks: dict[str, Check] = Field(description="one check per dependency: database, broker, store")


async def _check_database(ctx: ApiContext) -> None:
    async with ctx.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))


def _check_broker_sync(ctx: ApiContext) -> None:
    timeout = ctx.settings.readiness_timeout_s
    with Connection(ctx.settings.broker_url, connect_timeout=timeout) as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)


async def _check_broker(ctx: ApiContext) -> None:
    await asyncio.to_thread(_check_broker_sync, ctx)


async def _check_store(ctx: ApiContext) -> None:
    await asyncio.to_thread(ctx.store.ping)


def _queue_depths(ctx: ApiContext) -> dict[str, int]:
    timeout = ctx.settings.readiness_timeout_s
    depths = {}
    with Connection(ctx.settings.broker_url, connect_timeout=timeout) as conn:
        for queue in ctx.job_types.queues:
            channel = conn.channel()  # a failed passive declare closes the channel on AMQP
            try:
                depths[queue] = channel.queue_declare(queue=queue, passive=True).message_count
            except (ChannelError, *conn.channel_errors):  # never declared, or (Redis) empty
                depths[queue] = 0
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return depths


CHECKS = {"database": _check_database, "broker": _check_broker, "store": _check_store}


async def _run_check(name: str, ctx: ApiContext) -> Check:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(CHECKS[name](ctx), timeout=ctx.settings.readiness_timeout_s + 1)
        error = None
    except TimeoutError:
        error = "timed out"
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return Check(ok=error is None, latency_ms=round((time.perf_counter() - started) * 1000, 2), error=error)


@health.get("/healthz", summary="The API process is up", auth=False, response=Health)
async def healthz(request: web.Request, call: Call[None, None]) -> Health:
    return Health(status="ok")


@health.get(
    "/readyz",
    summary="The database, the broker and the artifact store are reachable",
    auth=False,
    response=Readiness,
    errors=(503,),
)
async def readyz(request: web.Request, call: Call[None, None]) -> Readiness:
    ctx = context(request)
    results = await asyncio.gather(*(_run_check(name, ctx) for name in CHECKS))
    checks = dict(zip(CHECKS, results, strict=True))
    down = [name for name, check in checks.items() if not check.ok]
    if down:
        raise Problem(
            503,
            f"unreachable: {', '.join(down)}",
            checks={name: check.model_dump() for name, check in checks.items()},
        )
    return Readiness(status="ready", checks=checks)


@health.get(
    "/metrics",
    summary="Prometheus metrics",
    auth=False,
    response_doc={"content": {"text/plain": {"schema": {"type": "string"}}}},
)
async def metrics(request: web.Request, call: Call[None, None]) -> web.Response:
    ctx = context(request)
    metrics = ctx.metrics
    async with ctx.db() as session:
        metrics.set_job_counts(await session.run_sync(job_counts_by_status))
    try:
        depths = await asyncio.wait_for(asyncio.to_thread(_queue_depths, ctx), ctx.settings.readiness_timeout_s + 1)
        metrics.set_queue_depths(depths)
    except Exception as exc:  # a broker outage shows on /readyz; metrics still answer
        log.warning("queue depths unavailable: %s", exc)
    await request.app[ROUTER].scrape_model_servers()  # per-model serving metrics, labelled by model_server
    response = web.Response(body=metrics.render())
    response.headers["Content-Type"] = metrics.content_type
    return response


@health.get(
    "/openapi.json",
    summary="This API's OpenAPI 3.1 document",
    auth=False,
    response_doc={"content": {"application/json": {"schema": {"type": "object"}}}},
)
async def openapi(request: web.Request, call: Call[None, None]) -> web.Response:
    return web.json_response(openapi_document(request.app[ENDPOINT_TABLES], request.app))
