"""The API's event loop choice (api/server.py): uvloop by default, asyncio's when switched off."""

from __future__ import annotations

import asyncio

import uvloop

from api.server import new_event_loop
from core.settings import Settings


def test_uvloop_by_default_and_asyncio_when_switched_off():
    default = new_event_loop(Settings())
    plain = new_event_loop(Settings(api_event_loop="asyncio"))
    try:
        assert isinstance(default, uvloop.Loop)
        assert not isinstance(plain, uvloop.Loop) and isinstance(plain, asyncio.BaseEventLoop)
    finally:
        default.close()
        plain.close()
