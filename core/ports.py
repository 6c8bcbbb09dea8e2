"""Free TCP ports: for the embedded servers, the local API and a training job's rendezvous.

A standard port is used when it is free; otherwise a nearby one (5433 when the
machine's own PostgreSQL holds 5432), and failing that any port the kernel hands
out. Checking is done by binding, so a port is only "free" at the moment of the
check: callers that lose the race retry with a fresh pick.
"""

from __future__ import annotations

import socket
from collections.abc import Collection

HOST = "127.0.0.1"
MAX_PORT = 65535
NEARBY = 10  # how many ports after a standard one are tried before asking the kernel
KERNEL_TRIES = 200


class NoFreePort(RuntimeError):
    """No usable port could be found."""


def is_free(port: int, host: str = HOST) -> bool:
    """Whether a server could listen on ``host:port`` right now."""
    if not 0 < port <= MAX_PORT:
        return False
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # servers set SO_REUSEADDR, so a port with only TIME_WAIT leftovers is free for them too
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _kernel_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def available(port: int, *, host: str = HOST, paired_offset: int | None = None, avoid: Collection[int] = ()) -> bool:
    """Whether ``port`` (and ``port + paired_offset``) is free and not in ``avoid``."""
    ports = [port] if paired_offset is None else [port, port + paired_offset]
    return all(p not in avoid and is_free(p, host) for p in ports)


def pick_port(
    preferred: int | None = None,
    *,
    host: str = HOST,
    paired_offset: int | None = None,
    avoid: Collection[int] = (),
) -> int:
    """A free port: ``preferred`` or one of the next few when free, else one from the kernel.

    ``paired_offset``: the port at that offset must be free too (SeaweedFS listens for
    gRPC on port + 10000). ``avoid``: ports already promised to someone else.
    """
    if preferred is not None:
        for port in range(preferred, preferred + NEARBY):
            if available(port, host=host, paired_offset=paired_offset, avoid=avoid):
                return port
    for _ in range(KERNEL_TRIES):
        port = _kernel_port(host)
        if available(port, host=host, paired_offset=paired_offset, avoid=avoid):
            return port
    raise NoFreePort(f"no free TCP port on {host}")
