"""Opaque, prefixed, time-ordered identifiers (``file_01J…``, ``job_01J…``).

The 26-character body is a ULID: 48 bits of milliseconds then 80 random bits, in
Crockford base32, so ids sort by creation time and serve directly as list cursors.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"

PREFIXES = {
    "tenant": "ten",
    "api_key": "key",
    "file": "file",
    "job": "job",
    "job_event": "evt",
    "artifact": "art",
    "model": "mdl",
    "model_version": "mv",
    "deployment": "dep",
    "prediction": "pred",
    "webhook_delivery": "msg",
    "model_server": "msrv",
}


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        value, rem = divmod(value, 32)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def new_id(kind: str, *, now_ms: int | None = None) -> str:
    """A new id for an object of ``kind`` (a key of PREFIXES)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    body = _encode(ms, 10) + _encode(secrets.randbits(80), 16)
    return f"{PREFIXES[kind]}_{body}"


def has_prefix(value: str, kind: str) -> bool:
    prefix = PREFIXES[kind] + "_"
    return value.startswith(prefix) and len(value) == len(prefix) + 26


def first_id_at(kind: str, ms: int) -> str:
    """The smallest id of ``kind`` made at or after ``ms`` (Unix milliseconds): a lower bound for
    a range of rows by creation time that the ``(tenant_id, id)`` indexes can serve."""
    return f"{PREFIXES[kind]}_{_encode(ms, 10)}{'0' * 16}"
