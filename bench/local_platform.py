"""A throwaway ``maas up`` for benchmarks: every service embedded under a temporary folder, the API,
a Celery worker and a model server (``maas serve``) each in a process of its own, its URL and API
key read from its output, and everything stopped afterwards. Benchmarks then measure the platform
the way a user meets it: over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Platform:
    url: str
    key: str
    data_dir: Path
    grpc_target: str = ""  # host:port of the API's gRPC endpoint

    def call(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None
    ) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Authorization": f"Bearer {self.key}", "Content-Type": "application/json", **(headers or {})},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.loads(response.read())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def local_platform(**settings: str) -> Iterator[Platform]:
    """Run ``maas up`` with MAAS_* ``settings`` until the block ends."""
    data_dir = Path(tempfile.mkdtemp(prefix="maas-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(
        {
            "MAAS_DATA_DIR": str(data_dir),
            "MAAS_API_PORT": str(_free_port()),
            "MAAS_GRPC_PORT": str(_free_port()),
            "MAAS_LOG_FORMAT": "text",
            "PYTHONUNBUFFERED": "1",
            **{f"MAAS_{k.upper()}": v for k, v in settings.items()},
        }
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "cli.main", "up"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()
    try:
        url = key = None
        deadline = time.monotonic() + 180
        while key is None:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if match := re.search(r"maas is running: (http://\S+)", line):
                url = match.group(1)
            elif url and (match := re.match(r"^\s+(maas_\S+)$", line)):
                key = match.group(1)
        yield Platform(url=url, key=key, data_dir=data_dir, grpc_target=f"127.0.0.1:{env['MAAS_GRPC_PORT']}")
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def extra_api(
    maas: Platform, settings: Mapping[str, str], log: Path, *, grpc: bool = False, cwd: Path | None = None
) -> Iterator[tuple[str, str, int]]:
    """One more API process (``maas api``) on ``maas``'s services with MAAS_* ``settings``, run from ``cwd``
    (another checkout of the code; default: this one): its URL, its gRPC target ("" without ``grpc``) and pid."""
    port, grpc_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update({"MAAS_DATA_DIR": str(maas.data_dir), "MAAS_API_PORT": str(port)})
    env.update({"MAAS_GRPC_PORT": str(grpc_port)} if grpc else {"MAAS_GRPC_ENABLED": "false"})
    env.update({f"MAAS_{k.upper()}": v for k, v in settings.items()})
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "api"], env=env, stdout=out, stderr=out, cwd=cwd or REPO
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=1).close()
                break
            except (urllib.error.URLError, OSError):
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError(f"the extra API did not start; see {log}") from None
                time.sleep(0.3)
        yield url, f"127.0.0.1:{grpc_port}" if grpc else "", process.pid
    finally:
        stop_process(process)


def stop_process(process: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``."""
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
