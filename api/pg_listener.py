"""One PostgreSQL ``LISTEN`` connection per API process, shared by everything that reacts to a ``NOTIFY``.

The channels are fixed when the listener is built (they are ``LISTEN``-ed on every connect);
handlers subscribe to a channel by name at any time, and are called with each notification's
payload, in the event loop. A notification only ever says "read again": the rows stay the truth.
While the connection is down (a database restart), notifications are lost, so ``listening``
is False and subscribers fall back to polling; on every (re)connect each ``on_connect``
callback runs, so a subscriber can read again what it may have missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable

import psycopg
from aiohttp import web
from psycopg import sql

from api.context import CONTEXT
from core.db import libpq_url

log = logging.getLogger("maas.api.listener")

RECONNECT_S = 1.0

Handler = Callable[[str], None]


class PgListener:
    """The process's ``LISTEN`` connection: ``subscribe(channel, handler)``, ``start()``, ``close()``."""

    def __init__(self, url: str, channels: Iterable[str]) -> None:
        self.url = url  # a libpq URL (core.db.libpq_url)
        self.channels = tuple(channels)
        self.listening = False
        self._handlers: dict[str, list[Handler]] = {channel: [] for channel in self.channels}
        self._on_connect: list[Callable[[], None]] = []
        self._task: asyncio.Task[None] | None = None

    def subscribe(self, channel: str, handler: Handler, on_connect: Callable[[], None] | None = None) -> None:
        if channel not in self._handlers:
            raise ValueError(f"this listener does not LISTEN on {channel!r}; it listens on {self.channels}")
        self._handlers[channel].append(handler)
        if on_connect is not None:
            self._on_connect.append(on_connect)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen(), name="pg-listener")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.listening = False

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    for channel in self.channels:
                        await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                    self.listening = True
                    for callback in self._on_connect:  # what was sent while we were away is lost
                        callback()
                    async for notice in conn.notifies():
                        for handler in self._handlers.get(notice.channel, ()):
                            try:
                                handler(notice.payload)
                            except Exception:
                                log.exception("a handler of %s failed", notice.channel)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():  # the driver turned our cancellation into its own error
                    raise asyncio.CancelledError from exc
                log.warning("the LISTEN connection was lost (%s); subscribers poll until it is back", exc)
            self.listening = False
            await asyncio.sleep(RECONNECT_S)


LISTENER = web.AppKey("pg_listener", PgListener)


def listener_context(*channels: str) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context (after the one that sets up ``CONTEXT``) holding the app's listener on
    ``channels`` at ``app[LISTENER]``; the contexts after it subscribe to it."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        listener = PgListener(libpq_url(app[CONTEXT].settings.service("database_url")), channels)
        listener.start()
        app[LISTENER] = listener
        yield
        await listener.close()

    return context
