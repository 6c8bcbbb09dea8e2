"""Where the SDK connects and with which key: arguments first, then ``MAAS_BASE_URL`` and
``MAAS_API_KEY`` from the environment (the CLI passes what ``maas login`` stored)."""

from __future__ import annotations

import os

import httpx

from maas_client.errors import MaasError

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# a live event stream idles between events; the server sends a comment every 15 s, so 60 s of silence is a dead link
STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)


def from_environment() -> tuple[str | None, str | None]:
    """``MAAS_BASE_URL`` and ``MAAS_API_KEY``, None where unset."""
    return os.environ.get("MAAS_BASE_URL") or None, os.environ.get("MAAS_API_KEY") or None


def resolve(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """The base URL (without a trailing slash) and the API key to use; raises MaasError without a key."""
    env_url, env_key = from_environment()
    url = (base_url or env_url or DEFAULT_BASE_URL).rstrip("/")
    key = api_key or env_key
    if not key:
        raise MaasError("no API key: pass api_key=, set MAAS_API_KEY, or run `maas login`")
    return url, key


def with_wait(timeout: httpx.Timeout, wait_s: float) -> httpx.Timeout:
    """``timeout`` with its read timeout extended by the time the server may hold the answer."""
    if not wait_s or timeout.read is None:
        return timeout
    return httpx.Timeout(timeout.connect, read=timeout.read + wait_s, write=timeout.write, pool=timeout.pool)
