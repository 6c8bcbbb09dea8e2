"""A real local HTTP receiver for webhooks, with scripted answers, for tests that check deliveries."""

from __future__ import annotations

import asyncio

from aiohttp import web


class Receiver:
    """Answers with the scripted statuses in turn (then 200); ``hang`` never answers in time."""

    def __init__(self, statuses: list[int] | None = None, hang: bool = False):
        self.statuses, self.hang = list(statuses or []), hang
        self.requests: list[tuple[dict[str, str], bytes]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((dict(request.headers), await request.read()))
        if self.hang:
            await asyncio.sleep(60)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)


async def serve(aiohttp_server, receiver: Receiver) -> str:
    """Serve ``receiver`` at ``/hook`` with the ``aiohttp_server`` fixture; returns the hook's URL."""
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    server = await aiohttp_server(app)
    return str(server.make_url("/hook"))
