"""Serve the app on ``settings.api_host:api_port`` with structured logs, on the event loop ``api_event_loop`` names."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from api.app import create_app
from core.logging import configure_logging
from core.settings import Settings

log = logging.getLogger("maas.api")


def new_event_loop(settings: Settings) -> asyncio.AbstractEventLoop:
    """The API's loop: uvloop's when ``api_event_loop`` is uvloop and it is installed (it spends less CPU per
    request, REST and gRPC alike: grpc.aio and aiohttp both run on it), the standard library's otherwise."""
    if settings.api_event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            log.warning("MAAS_API_EVENT_LOOP=uvloop but uvloop is not installed; using asyncio's event loop")
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def serve(settings: Settings) -> None:
    configure_logging(settings.log_format)
    loop = new_event_loop(settings)
    asyncio.set_event_loop(loop)
    web.run_app(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        access_log_format='%a "%r" %s %b %Tf',
        print=None,
        loop=loop,
    )
