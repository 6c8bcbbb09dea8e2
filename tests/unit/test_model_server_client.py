"""The API's HTTP client for the model servers: answers, pooled connections, and every way a server can fail."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from api.model_server_client import ModelServerClient, Unreachable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_server(handler: Handler) -> AsyncIterator[str]:
    """A TCP server running ``handler(reader, writer, connection_number)``; yields its base URL."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            await handler(reader, writer, connections)
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    return await reader.readexactly(length)


async def answer(writer: asyncio.StreamWriter, body: bytes, extra: bytes = b"") -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))
    await writer.drain()


async def test_answers_come_back_and_the_connection_is_reused():
    peers: list[int] = []

    async def echo(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername")[1])
        status = int(request.query.get("status", 200))
        return web.Response(body=b"got " + await request.read(), status=status)

    app = web.Application()
    app.router.add_post("/v1/infer/{id}", echo)
    server = TestServer(app)
    await server.start_server()
    client = ModelServerClient()
    try:
        base = str(server.make_url("")).rstrip("/")
        assert await client.post(base, "/v1/infer/a", b"one", "application/x-t") == (200, b"got one")
        assert await client.post(base, "/v1/infer/a?status=421", b"two", "application/x-t") == (421, b"got two")
        big = bytes(range(256)) * 4096  # 1 MiB
        assert await client.post(base, "/v1/infer/a", big, "application/x-t") == (200, b"got " + big)
    finally:
        await client.close()
        await server.close()
    assert len(set(peers)) == 1  # one keep-alive connection for all three


async def test_a_pooled_connection_the_server_dropped_is_replaced_and_the_request_sent_again():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await answer(writer, await read_request(reader))
        if number == 1:
            await read_request(reader)  # the second request on this connection: dropped unanswered

    async with raw_server(handler) as url:
        client = ModelServerClient()
        try:
            assert await client.post(url, "/x", b"first", "a/b") == (200, b"first")
            assert await client.post(url, "/x", b"second", "a/b") == (200, b"second")
        finally:
            await client.close()


async def test_connection_close_is_honoured():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await answer(writer, await read_request(reader), b"Connection: close\r\n")

    async with raw_server(handler) as url:
        client = ModelServerClient()
        try:
            for _ in range(3):
                assert await client.post(url, "/x", b"hi", "a/b") == (200, b"hi")
        finally:
            await client.close()


async def test_a_closed_port_is_unreachable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    with pytest.raises(Unreachable):
        await ModelServerClient().post(url, "/x", b"", "a/b")


@pytest.mark.parametrize(
    ("reply", "words"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n", "Transfer-Encoding"),
        (b"HTTP/1.1 200 OK\r\nContent-Type: a/b\r\n\r\n", "no Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", "broke off"),
        (b"HTTP/1.1 2", "broke off"),
        (b"SSH-2.0-OpenSSH\r\n", "not an HTTP answer"),
    ],
)
async def test_answers_in_another_shape_or_cut_short_are_unreachable(reply: bytes, words: str):
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()

    async with raw_server(handler) as url:
        with pytest.raises(Unreachable, match=words):
            await ModelServerClient().post(url, "/x", b"hi", "a/b")


async def test_a_server_that_never_answers_times_out():
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        await asyncio.sleep(30)

    async with raw_server(handler) as url:
        client = ModelServerClient()
        with pytest.raises(TimeoutError):
            await client.post(url, "/x", b"hi", "a/b", timeout_s=0.2)
        await client.close()
