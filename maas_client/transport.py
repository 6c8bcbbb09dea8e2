"""Sending calls over httpx, with the retry policy and typed errors: ``SyncTransport`` for ``Client``,
``AsyncTransport`` for ``AsyncClient``. The two differ only in blocking versus awaiting.

Two httpx clients each: one for the API, with the key and no redirects followed (a content link's
302 is read, not followed), and a plain one for presigned store URLs, which must not see the key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, TypeVar

import httpx

from maas_client import __version__
from maas_client.calls import Call
from maas_client.config import DEFAULT_TIMEOUT, STREAM_TIMEOUT, with_wait
from maas_client.errors import APIConnectionError, APIError, error_from_response
from maas_client.retries import RetryPolicy

T = TypeVar("T")


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "User-Agent": f"maas-client/{__version__}"}


def _error(response: httpx.Response) -> APIError:
    return error_from_response(response.status_code, response.headers, response.content)


class SyncTransport:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.timeout, self.retry = timeout, retry or RetryPolicy()
        self.api = httpx.Client(base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport)
        self.plain = httpx.Client(timeout=timeout, follow_redirects=True, transport=transport)

    def close(self) -> None:
        self.api.close()
        self.plain.close()

    def send(self, call: Call[T]) -> T:
        """Send ``call`` (repeating it as the retry policy allows) and read its answer."""
        response = self.request(
            call.method,
            call.path,
            idempotent=call.idempotent,
            wait_s=call.wait_s,
            params=call.params,
            json=call.json,
            headers=dict(call.headers),
        )
        return call.parse(response)

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        wait_s: float = 0,
        content: Callable[[], Any] | None = None,
        repeatable: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """The response (any status below 400); ``content`` makes the body afresh for each attempt."""
        attempt = 0
        while True:
            body = {"content": content()} if content is not None else {}
            try:
                response = self.api.request(method, path, timeout=with_wait(self.timeout, wait_s), **body, **kwargs)
            except httpx.TransportError as exc:
                delay = self.retry.after_connection_error(attempt, idempotent and repeatable)
                if delay is None:
                    raise APIConnectionError(f"{method} {path}: {exc!r}") from exc
            else:
                if response.status_code < 400:
                    return response
                error = _error(response)
                delay = self.retry.after_status(attempt, response.status_code, error.retry_after)
                if not repeatable:
                    delay = None
                if delay is None:
                    raise error
            time.sleep(delay)
            attempt += 1

    def open_stream(self, path: str, headers: dict[str, str]) -> httpx.Response:
        """A streamed GET, open with a success status (the caller closes it); errors as in ``request``."""
        attempt = 0
        while True:
            request = self.api.build_request("GET", path, headers=headers, timeout=STREAM_TIMEOUT)
            response = self.api.send(request, stream=True)
            if response.status_code < 400:
                return response
            response.read()
            response.close()
            error = _error(response)
            delay = self.retry.after_status(attempt, response.status_code, error.retry_after)
            if delay is None:
                raise error
            time.sleep(delay)
            attempt += 1

    def download(self, url: str) -> Iterator[bytes]:
        """The bytes at a presigned URL (no API key sent), as they arrive."""
        with self.plain.stream("GET", url) as response:
            if response.status_code >= 400:
                response.read()
                raise _error(response)
            yield from response.iter_bytes()


class AsyncTransport:
    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: httpx.Timeout = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.timeout, self.retry = timeout, retry or RetryPolicy()
        self.api = httpx.AsyncClient(base_url=base_url, headers=_headers(api_key), timeout=timeout, transport=transport)
        self.plain = httpx.AsyncClient(timeout=timeout, follow_redirects=True, transport=transport)

    async def aclose(self) -> None:
        await self.api.aclose()
        await self.plain.aclose()

    async def send(self, call: Call[T]) -> T:
        """Send ``call`` (repeating it as the retry policy allows) and read its answer."""
        response = await self.request(
            call.method,
            call.path,
            idempotent=call.idempotent,
            wait_s=call.wait_s,
            params=call.params,
            json=call.json,
            headers=dict(call.headers),
        )
        return call.parse(response)

    async def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        wait_s: float = 0,
        content: Callable[[], Any] | None = None,
        repeatable: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """The response (any status below 400); ``content`` makes the body afresh for each attempt."""
        attempt = 0
        while True:
            body = {"content": content()} if content is not None else {}
            try:
                response = await self.api.request(
                    method, path, timeout=with_wait(self.timeout, wait_s), **body, **kwargs
                )
            except httpx.TransportError as exc:
                delay = self.retry.after_connection_error(attempt, idempotent and repeatable)
                if delay is None:
                    raise APIConnectionError(f"{method} {path}: {exc!r}") from exc
            else:
                if response.status_code < 400:
                    return response
                error = _error(response)
                delay = self.retry.after_status(attempt, response.status_code, error.retry_after)
                if not repeatable:
                    delay = None
                if delay is None:
                    raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def open_stream(self, path: str, headers: dict[str, str]) -> httpx.Response:
        """A streamed GET, open with a success status (the caller closes it); errors as in ``request``."""
        attempt = 0
        while True:
            request = self.api.build_request("GET", path, headers=headers, timeout=STREAM_TIMEOUT)
            response = await self.api.send(request, stream=True)
            if response.status_code < 400:
                return response
            await response.aread()
            await response.aclose()
            error = _error(response)
            delay = self.retry.after_status(attempt, response.status_code, error.retry_after)
            if delay is None:
                raise error
            await asyncio.sleep(delay)
            attempt += 1

    async def download(self, url: str) -> AsyncIterator[bytes]:
        """The bytes at a presigned URL (no API key sent), as they arrive."""
        async with self.plain.stream("GET", url) as response:
            if response.status_code >= 400:
                await response.aread()
                raise _error(response)
            async for chunk in response.aiter_bytes():
                yield chunk
