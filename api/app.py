"""The app factory: ``create_app(settings)`` builds the aiohttp application.

Connections (database engine, S3 client) are opened in a cleanup context on
startup and closed on shutdown; nothing connects at import time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from api import event_fanout
from api.auth import KnownKeys
from api.context import CONTEXT, ApiContext
from api.endpoints import add_routes
from api.event_fanout import fanout_context
from api.grpc_server import drain_grpc, grpc_context
from api.inference_router import serving_context
from api.metrics import ApiMetrics
from api.openapi import ENDPOINT_TABLES as TABLES_KEY
from api.pg_listener import listener_context
from api.problems import Problem, oip_path
from api.rate_limits import RateLimiter
from api.routes import ENDPOINT_TABLES
from api.routes.ui import add_ui_routes
from api.usage_meter import UsageMeter
from core.artifact_store import ArtifactStore
from core.broker import create_celery
from core.db import async_session_factory, make_async_engine
from core.serving_signals import REPLICAS_CHANNEL
from core.settings import Settings
from job_types.registry import load_job_types

log = logging.getLogger("maas.api")


def _route_label(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource if route is not None else None
    return resource.canonical if resource is not None else "unmatched"


def _as_problem(exc: web.HTTPException) -> Problem:
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return Problem(405, f"{exc.reason}; allowed: {allowed}", headers={"Allow": allowed})
    if exc.status == 404:
        return Problem(404, "no such route")
    if exc.status == 413:
        return Problem(413, f"the request body is larger than the limit: {exc.text}")
    return Problem(exc.status, exc.text or exc.reason)


def _render(problem: Problem, request: web.Request) -> web.Response:
    # the one exception to problem+json: Open Inference Protocol clients read {"error": "..."}
    return problem.oip_response() if oip_path(request.path) else problem.response(request.path)


@web.middleware
async def problem_middleware(request: web.Request, handler) -> web.StreamResponse:
    """Render every error as problem+json (``{"error"}`` under /v2) and count every answer in the metrics."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except Problem as problem:
        status = problem.status
        return _render(problem, request)
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise  # redirects
        return _render(_as_problem(exc), request)
    except web.RequestPayloadError as exc:  # a body the transport cannot decode: a broken gzip stream
        status = 400
        cause = exc.__cause__ or exc
        response = _render(
            Problem(400, f"the request body cannot be read: {getattr(cause, 'message', cause)}"), request
        )
        response.force_close()  # the rest of the body cannot be read past either: this connection is done
        return response
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _render(Problem(500, "internal error; it was logged"), request)
    finally:
        request.app[CONTEXT].metrics.observe(
            request.method, _route_label(request), status, time.perf_counter() - started
        )


def create_app(settings: Settings) -> web.Application:
    settings.require("database_url", "broker_url", "s3_endpoint_url")
    job_types = load_job_types(settings)  # a broken job type stops the API here, not at its first job
    app = web.Application(middlewares=[problem_middleware], client_max_size=settings.max_request_body_bytes)
    app[TABLES_KEY] = ENDPOINT_TABLES

    async def services(app: web.Application) -> AsyncIterator[None]:
        engine = make_async_engine(settings)
        keys = KnownKeys(settings)
        db = async_session_factory(engine)
        usage = UsageMeter(settings, db)
        app[CONTEXT] = ApiContext(
            settings=settings,
            engine=engine,
            db=db,
            store=ArtifactStore(settings),
            celery=create_celery(settings),
            job_types=job_types,
            metrics=ApiMetrics(),
            keys=keys,
            rates=RateLimiter(settings, db),
            usage=usage,
        )
        keys.start()
        usage.start()
        yield
        await usage.stop()
        await keys.stop()
        app[CONTEXT].celery.close()
        await engine.dispose()

    app.cleanup_ctx.append(services)
    # one LISTEN connection per process: job events for the SSE streams (api/event_fanout.py), replica
    # changes for the inference router's table and its requests held for a cold start
    app.cleanup_ctx.append(listener_context(event_fanout.CHANNEL, REPLICAS_CHANNEL))
    app.cleanup_ctx.append(fanout_context)
    app.cleanup_ctx.append(serving_context)
    if settings.grpc_enabled:  # the same router and checks as /v2, a second transport (api/grpc_server.py)
        app.cleanup_ctx.append(grpc_context)
        app.on_shutdown.append(drain_grpc)
    add_routes(app, ENDPOINT_TABLES)
    add_ui_routes(app)  # the dashboard's static files, outside the OpenAPI document
    return app
