"""The API's client for the model servers' data plane (``POST /v1/infer/{version}``): HTTP/1.1 on pooled sockets.

Every synchronous inference request makes this hop, and aiohttp's general-purpose client cost a
third of the API's CPU per request on it (bench/serving.py). This client does what the hop needs and
no more: a POST whose body has a Content-Length, an answer with a Content-Length, keep-alive
connections pooled per server, one request at a time on each. The model servers are ours
(``serving.data_plane``, aiohttp); an answer in another shape (no length, chunked) is refused.

A pooled connection that the server closed while it sat idle (its keep-alive timeout) fails before
a byte of the answer arrives; the request is then sent once more, on a new connection, as HTTP
clients do. Any other failure to connect or to get a whole answer raises :class:`Unreachable`;
``timeout_s`` covers the whole exchange and raises ``TimeoutError``.

    client = ModelServerClient()
    status, payload = await client.post("http://127.0.0.1:8081", "/v1/infer/mv_1", body, "application/x-t", 30)
    await client.close()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from urllib.parse import urlsplit

MAX_IDLE_PER_SERVER = 256
MAX_HEADER_LINES = 100


class Unreachable(Exception):
    """The server could not be reached, or broke off before its whole answer arrived."""


class _NothingBack(Exception):
    """The connection ended before the first byte of an answer."""


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @property
    def usable(self) -> bool:
        return not (self.writer.is_closing() or self.reader.at_eof() or self.reader.exception() is not None)

    def close(self) -> None:
        self.writer.close()


class ModelServerClient:
    def __init__(self, connect_timeout_s: float = 2.0) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def post(
        self, base_url: str, path: str, body: bytes, content_type: str, timeout_s: float | None = None
    ) -> tuple[int, bytes]:
        """POST ``body`` to ``base_url + path``; the answer's status and body."""
        host, port = _address(base_url)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {_host_header(host, port)}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("latin-1")
        async with asyncio.timeout(timeout_s):
            connection = self._take(host, port)
            if connection is not None:
                try:
                    return await self._exchange(host, port, connection, head, body)
                except _NothingBack:
                    pass  # closed by the server while idle: once more, on a new connection
            connection = await self._open(host, port)
            try:
                return await self._exchange(host, port, connection, head, body)
            except _NothingBack as exc:
                raise Unreachable(f"{base_url} closed the connection without answering") from exc

    async def close(self) -> None:
        connections = [c for pool in self._idle.values() for c in pool]
        self._idle.clear()
        for connection in connections:
            connection.close()
        for connection in connections:
            with contextlib.suppress(Exception):
                await connection.writer.wait_closed()

    # ------------------------------------------------------------ connections

    def _take(self, host: str, port: int) -> _Connection | None:
        pool = self._idle.get((host, port))
        while pool:
            connection = pool.pop()
            if connection.usable:
                return connection
            connection.close()
        return None

    def _give_back(self, host: str, port: int, connection: _Connection) -> None:
        pool = self._idle.setdefault((host, port), [])
        if len(pool) < MAX_IDLE_PER_SERVER and connection.usable:
            pool.append(connection)
        else:
            connection.close()

    async def _open(self, host: str, port: int) -> _Connection:
        try:
            async with asyncio.timeout(self.connect_timeout_s) as deadline:
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError as exc:
            if deadline.expired():  # the connect timeout, not the caller's
                raise Unreachable(f"no connection to {host}:{port} within {self.connect_timeout_s} s") from None
            raise exc
        except OSError as exc:
            raise Unreachable(f"cannot connect to {host}:{port}: {exc}") from exc
        return _Connection(reader, writer)

    # ------------------------------------------------------------ one request

    async def _exchange(
        self, host: str, port: int, connection: _Connection, head: bytes, body: bytes
    ) -> tuple[int, bytes]:
        """Send, read the whole answer, and pool the connection again when the server keeps it open."""
        try:
            status, payload, keep_alive = await self._send_and_read(connection, head, body)
        except BaseException:
            connection.close()  # in an unknown state: never reused
            raise
        if keep_alive:
            self._give_back(host, port, connection)
        else:
            connection.close()
        return status, payload

    async def _send_and_read(self, connection: _Connection, head: bytes, body: bytes) -> tuple[int, bytes, bool]:
        reader, writer = connection.reader, connection.writer
        try:
            writer.writelines((head, body))
            await writer.drain()
            status_line = await reader.readuntil(b"\r\n")
        except ConnectionError as exc:
            raise _NothingBack from exc
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                raise Unreachable(f"the answer broke off: {exc.partial[:80]!r}") from exc
            raise _NothingBack from exc
        except asyncio.LimitOverrunError as exc:
            raise Unreachable("the answer's status line is too long") from exc
        try:
            status, keep_alive = _status(status_line)
            length, keep_alive = _headers(await _header_lines(reader), keep_alive)
            payload = await reader.readexactly(length)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise Unreachable(f"the answer broke off: {exc!r}") from exc
        return status, payload, keep_alive


def _address(base_url: str) -> tuple[str, int]:
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise Unreachable(f"not a plain http:// URL: {base_url!r}")
    return parts.hostname, parts.port or 80


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _status(line: bytes) -> tuple[int, bool]:
    """The status and whether the connection stays open by default (HTTP/1.1)."""
    version, _, rest = line.rstrip(b"\r\n").partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or not code.isdigit():
        raise Unreachable(f"not an HTTP answer: {line[:80]!r}")
    return int(code), version == b"HTTP/1.1"


async def _header_lines(reader: asyncio.StreamReader) -> list[bytes]:
    lines = []
    while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
        lines.append(line)
        if len(lines) > MAX_HEADER_LINES:
            raise Unreachable("the answer has too many header lines")
    return lines


def _headers(lines: Iterable[bytes], keep_alive: bool) -> tuple[int, bool]:
    """The body length, and whether the connection may be reused."""
    length = None
    for line in lines:
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length" and value.isdigit():
            length = int(value)
        elif name == b"transfer-encoding":
            raise Unreachable(f"the answer uses Transfer-Encoding {value.decode('latin-1')!r}; expected a length")
        elif name == b"connection":
            keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
    if length is None:
        raise Unreachable("the answer has no Content-Length")
    return length, keep_alive
