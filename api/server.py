"""Serve the app on ``settings.api_host:api_port`` with structured logs."""

from __future__ import annotations

from aiohttp import web

from api.app import create_app
from core.logging import configure_logging
from core.settings import Settings


def serve(settings: Settings) -> None:
    configure_logging(settings.log_format)
    web.run_app(
        create_app(settings),
        host=settings.api_host,
        port=settings.api_port,
        access_log_format='%a "%r" %s %b %Tf',
        print=None,
    )
