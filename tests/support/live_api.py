"""The API served from a thread of its own, for tests that talk to it synchronously (a fuzzer that
sends with ``requests``, a raw socket) while the app keeps its own event loop.

``LiveApi(settings)`` serves ``create_app(settings)`` on a loopback port; ``base_url`` is where,
and ``run(factory)`` runs ``factory(client)`` (a coroutine using the helpers of
``tests.support.api`` with an aiohttp ``TestClient``) on the app's loop and returns its result.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from typing import TypeVar

from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from core.settings import Settings

T = TypeVar("T")
START_TIMEOUT_S = 60.0


class LiveApi:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="live-api", daemon=True)
        self._client: TestClient | None = None

    def __enter__(self) -> LiveApi:
        self._thread.start()
        self._client = self._submit(self._start()).result(START_TIMEOUT_S)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._submit(self._client.close()).result(START_TIMEOUT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self.loop.close()

    async def _start(self) -> TestClient:
        client = TestClient(TestServer(create_app(self.settings), host="127.0.0.1"))
        await client.start_server()
        return client

    def _submit(self, coroutine: Awaitable[T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]

    @property
    def client(self) -> TestClient:
        assert self._client is not None, "use LiveApi as a context manager"
        return self._client

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("")).rstrip("/")

    @property
    def port(self) -> int:
        port = self.client.port
        assert port is not None
        return port

    def run(self, factory: Callable[[TestClient], Awaitable[T]], timeout_s: float = 120.0) -> T:
        """``factory(client)`` run on the app's loop; its result."""

        async def call() -> T:
            return await factory(self.client)

        return self._submit(call()).result(timeout_s)
