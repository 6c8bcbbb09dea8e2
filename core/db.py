"""Engines and sessions for PostgreSQL: synchronous for workers and the CLI, asyncio for the API.

Both use psycopg 3, so one URL (``postgresql+psycopg://…``) serves both. Plain
``postgresql://`` URLs are accepted and pointed at psycopg.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, create_engine, make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import sessionmaker

from core.settings import Settings

log = logging.getLogger("maas.db")
T = TypeVar("T")


def sqlalchemy_url(url: str) -> str:
    """Normalise a PostgreSQL URL to the psycopg 3 driver."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain) :]
    return url


def libpq_url(url: str) -> str:
    """The URL for a plain psycopg (libpq) connection, without SQLAlchemy's driver name."""
    return make_url(sqlalchemy_url(url)).set(drivername="postgresql").render_as_string(hide_password=False)


def _connect_args(settings: Settings) -> dict:
    # a stopped database must fail a readiness probe quickly, not hang it
    return {"connect_timeout": max(1, int(settings.readiness_timeout_s))}


def make_engine(settings: Settings) -> Engine:
    return create_engine(
        sqlalchemy_url(settings.service("database_url")), pool_pre_ping=True, connect_args=_connect_args(settings)
    )


def make_async_engine(settings: Settings) -> AsyncEngine:
    return create_async_engine(
        sqlalchemy_url(settings.service("database_url")),
        pool_pre_ping=True,
        pool_size=10,
        max_overflow=10,
        connect_args=_connect_args(settings),
    )


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def async_session_factory(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


def _unreachable(exc: Exception) -> bool:
    """Whether ``exc`` says the database could not be reached (not that a statement was wrong)."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def through_outage(work: Callable[[], T], tolerance_s: float, what: str) -> T:
    """Run ``work`` (a whole transaction), again while the database cannot be reached, for up to
    ``tolerance_s``: a restart of PostgreSQL must not fail a job that was only reporting progress."""
    deadline = time.monotonic() + tolerance_s
    delay = 0.25
    while True:
        try:
            return work()
        except (OperationalError, DBAPIError) as exc:
            if not _unreachable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("%s: the database cannot be reached (%s); trying again in %.2g s", what, exc.orig, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
