"""Operations endpoints: ``/healthz`` (process up), ``/readyz`` (dependencies reachable),
``/metrics`` (Prometheus) and ``/openapi.json``.

None takes a tenant's API key. ``/healthz`` and ``/readyz`` stay open and say nothing
tenant-specific (a failed check's error is sanitized: no URL credentials, no password, no
tenant id). ``/metrics`` names every tenant and model, so it is guarded (:func:`metrics_access`):
with ``MAAS_METRICS_TOKEN`` set it needs ``Authorization: Bearer <that token>``; without one
it answers only clients on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import logging
import re
import time
from urllib.parse import urlsplit

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
from core.jobs import waiting_counts as waiting_job_counts
from core.settings import Settings

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


METRICS_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="maas-metrics"'}
MAX_CHECK_ERROR_CHARS = 300
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/@]*@")
_PASSWORD_PAIR = re.compile(r"(?i)\b(\w*(?:password|passwd|pwd|secret|token)\w*)(\s*[=:]\s*)[^\s,;&]+")
_TENANT_ID = re.compile(r"\bten_[0-9a-z]{26}\b")
MIN_REDACTED_SECRET = 4  # shorter secret values are not searched for (they would mangle every word)


def is_loopback(remote: str | None) -> bool:
    """Whether the peer address ``remote`` (``request.remote``) is on loopback (127.0.0.0/8, ::1)."""
    try:
        address = ipaddress.ip_address((remote or "").split("%", 1)[0])
    except ValueError:  # a unix socket, or nothing known
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def metrics_access(remote: str | None, authorization: str | None, token: str | None) -> Problem | None:
    """Who may read ``/metrics``: None to answer, else the Problem to answer instead.

    With a ``token`` (``MAAS_METRICS_TOKEN``): exactly ``Authorization: Bearer <token>``, compared
    in constant time, from anywhere (401 otherwise; a tenant's API key is just a wrong token).
    Without one: clients on loopback only (403 otherwise, asking for the token to be set).
    """
    if token:
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credentials.strip().encode("utf-8"), token.encode("utf-8")
        ):
            return None
        return Problem(
            401,
            "/metrics needs 'Authorization: Bearer <metrics token>' (the value of MAAS_METRICS_TOKEN); "
            "API keys do not open it",
            headers=METRICS_CHALLENGE,
        )
    if is_loopback(remote):
        return None
    return Problem(
        403,
        "/metrics answers only clients on loopback while no metrics token is configured: set "
        "MAAS_METRICS_TOKEN on the API and scrape with 'Authorization: Bearer <that token>'",
    )


def _secret_values(settings: Settings) -> list[str]:
    """The configured secrets an error message could quote: keys, tokens, and URL passwords."""
    values = [settings.s3_access_key, settings.s3_secret_key, settings.metrics_token]
    for url in (settings.database_url, settings.broker_url, settings.s3_endpoint_url):
        with contextlib.suppress(ValueError):
            values.append(urlsplit(url or "").password)
    return sorted({v for v in values if v and len(v) >= MIN_REDACTED_SECRET}, key=len, reverse=True)


def sanitize_check_error(message: str, settings: Settings) -> str:
    """A failed check's error as ``/readyz`` shows it to anyone: one line, at most
    MAX_CHECK_ERROR_CHARS, without URL credentials, ``password=…`` pairs, configured secrets or
    tenant ids."""
    for secret in _secret_values(settings):
        message = message.replace(secret, "***")
    message = _URL_USERINFO.sub(r"\1***@", message)
    message = _PASSWORD_PAIR.sub(r"\1\2***", message)
    message = _TENANT_ID.sub("ten_***", message)
    lines = message.strip().splitlines()
    return (lines[0] if lines else "")[:MAX_CHECK_ERROR_CHARS]


CHECKS = {"database": _check_database, "broker": _check_broker, "store": _check_store}


async def _run_check(name: str, ctx: ApiContext) -> Check:
    started = time.perf_counter()
    try:
        await asyncio.wait_for(CHECKS[name](ctx), timeout=ctx.settings.readiness_timeout_s + 1)
        error = None
    except TimeoutError:
        error = "timed out"
    except Exception as exc:
        error = sanitize_check_error(f"{type(exc).__name__}: {exc}", ctx.settings)
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
    summary="Prometheus metrics: with MAAS_METRICS_TOKEN set, send 'Authorization: Bearer <it>' "
    "(API keys do not open it); without, loopback clients only",
    auth=False,
    response_doc={"content": {"text/plain": {"schema": {"type": "string"}}}},
    errors=(401, 403),
)
async def metrics(request: web.Request, call: Call[None, None]) -> web.Response:
    ctx = context(request)
    refused = metrics_access(request.remote, request.headers.get("Authorization"), ctx.settings.metrics_token)
    if refused is not None:
        raise refused
    metrics = ctx.metrics
    async with ctx.db() as session:
        metrics.set_job_counts(await session.run_sync(job_counts_by_status))
        metrics.set_waiting_jobs(await session.run_sync(waiting_job_counts))
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
