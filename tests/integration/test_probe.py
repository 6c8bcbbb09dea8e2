"""The container health checks (``python -m infra.probe``) as the images run them: in a subprocess,
against a real HTTP listener and a real Celery worker on the test broker."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from core.settings import Settings, to_env
from tests.support.processes import Worker

REPO = Path(__file__).resolve().parents[2]


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "infra.probe", "--timeout", "3", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/readyz" else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_base() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_probe_passes_on_2xx_only(http_base: str) -> None:
    assert probe("http", f"{http_base}/readyz").returncode == 0
    failed = probe("http", f"{http_base}/other")
    assert failed.returncode == 1 and "503" in failed.stderr
    closed = probe("http", "http://127.0.0.1:9/readyz")
    assert closed.returncode == 1 and "unhealthy" in closed.stderr


def test_worker_probe_answers_for_a_live_worker_only(job_worker: Worker, settings: Settings) -> None:
    env = to_env(settings)
    assert probe("worker", "--node", job_worker.hostname, env=env).returncode == 0
    absent = probe("worker", "--node", "celery@nobody-here", env=env)
    assert absent.returncode == 1 and "did not answer" in absent.stderr
