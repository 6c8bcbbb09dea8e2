"""A loopback TCP proxy that can cut every connection through it, as a flaky network or a
restarting load balancer would: for tests of clients that must survive a dropped connection."""

from __future__ import annotations

import asyncio
import contextlib


class CuttingProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target_port``; ``cut()`` drops every open connection."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers |= {client_writer, upstream_writer}
        await asyncio.gather(self._pipe(client_reader, upstream_writer), self._pipe(upstream_reader, client_writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        self._close(writer)

    def _close(self, writer: asyncio.StreamWriter) -> None:
        self._writers.discard(writer)
        transport = writer.transport
        if not transport.is_closing():
            transport.abort()  # a reset, not a polite close: the client sees the connection break

    def cut(self) -> None:
        for writer in list(self._writers):
            self._close(writer)

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
