"""``maas up`` from nothing, as the README tells a new user: every service embedded, a URL and a key
printed, digits.npz uploaded with its sha256 and downloaded back byte for byte, the admin CLI
finding the running stack, Ctrl-C stopping everything, and a second start finding the data again.
And supervision: a worker and the embedded Redis killed under it come back, and a job submitted
before the kills finishes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import psutil
import pytest
from sklearn.datasets import load_digits

from tests.support.eventually import eventually
from tests.support.processes import REPO, inherited_env

pytestmark = pytest.mark.slow


class Up:
    """A ``maas up`` process whose output is read line by line."""

    def __init__(self, data_dir: Path, api_port: int, **settings: str):
        env = {
            **inherited_env(),
            "MAAS_DATA_DIR": str(data_dir),
            "MAAS_API_PORT": str(api_port),
            "PYTHONUNBUFFERED": "1",
            **{f"MAAS_{name.upper()}": value for name, value in settings.items()},
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "up"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def read_until(self, pattern: str, timeout_s: float = 120) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"no {pattern!r} in the output of maas up:\n" + "\n".join(self.lines))

    def interrupt(self) -> int:
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(90)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        return code


def digits_npz() -> bytes:
    digits = load_digits()
    buffer = io.BytesIO()
    np.savez(buffer, X=digits.data.astype(np.float32), y=digits.target)
    return buffer.getvalue()


def request(method: str, url: str, key: str, data: bytes | None = None, headers: dict | None = None):
    req = urllib.request.Request(
        url, data=data, method=method, headers={"Authorization": f"Bearer {key}", **(headers or {})}
    )
    return urllib.request.urlopen(req, timeout=30)


def descendants_alive(pid_list: list[int]) -> list[int]:
    alive = []
    for pid in pid_list:
        with contextlib.suppress(psutil.NoSuchProcess):  # gone between the listing and the look
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
    return alive


def _kill_leftovers(data_dir: Path) -> None:
    for leftover in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if str(data_dir) in " ".join(leftover.info["cmdline"] or []):
                os.kill(leftover.pid, signal.SIGKILL)


def test_maas_up_tour(unused_tcp_port_factory):
    data_dir = Path(tempfile.mkdtemp(prefix="maas-up-"))
    try:
        up = Up(data_dir, unused_tcp_port_factory())
        url = up.read_until(r"maas is running: (http://\S+)").group(1)
        key = up.read_until(r"^\s+(maas_\S+)$").group(1)
        children = [p.pid for p in psutil.Process(up.process.pid).children(recursive=True)]
        assert len(children) >= 5  # postgres, redis, weed, the API, the worker (and their helpers)

        payload = digits_npz()
        with request(
            "POST",
            f"{url}/v1/files?purpose=dataset&filename=digits.npz",
            key,
            payload,
            {"Content-Type": "application/octet-stream"},
        ) as response:
            assert response.status == 201
            uploaded = json.loads(response.read())
        assert uploaded["sha256"] == hashlib.sha256(payload).hexdigest()
        with request("GET", f"{url}/v1/files/{uploaded['id']}/content", key) as download:
            assert download.read() == payload  # urllib followed the redirect to the presigned URL

        listed = subprocess.run(
            [sys.executable, "-m", "cli.main", "admin", "keys", "list"],
            cwd=REPO,
            env={**inherited_env(), "MAAS_DATA_DIR": str(data_dir)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        assert key[: len("maas_") + 8] in listed.stdout

        assert up.interrupt() == 0
        assert "stopping ..." in up.lines
        eventually(
            lambda: descendants_alive(children) == [],
            10,
            lambda: f"the stack's processes to be gone: {descendants_alive(children)} still alive",
        )
        assert descendants_alive(children) == []
        assert not (data_dir / "stack.json").exists()

        again = Up(data_dir, unused_tcp_port_factory())
        url = again.read_until(r"maas is running: (http://\S+)").group(1)
        assert any("tenant" in line and "exists" in line for line in again.lines)
        with request("GET", f"{url}/v1/files/{uploaded['id']}", key) as response:
            assert json.loads(response.read())["sha256"] == uploaded["sha256"]
        assert again.interrupt() == 0
    finally:
        _kill_leftovers(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)


def _child_running(up: Up, marker: str) -> psutil.Process:
    (found,) = [p for p in psutil.Process(up.process.pid).children() if marker in " ".join(p.cmdline())]
    return found


def test_maas_up_restarts_a_dead_worker_and_a_dead_redis_and_the_job_still_finishes(unused_tcp_port_factory):
    data_dir = Path(tempfile.mkdtemp(prefix="maas-up-"))
    try:
        # a lost worker's job is re-queued after 5 s without a heartbeat, a lost message re-sent after 10 s
        up = Up(data_dir, unused_tcp_port_factory(), heartbeat_timeout_s="5", redispatch_after_s="10")
        url = up.read_until(r"maas is running: (http://\S+)").group(1)
        key = up.read_until(r"^\s+(maas_\S+)$").group(1)
        spec = {
            "model": {"arch": "mlp", "hidden": [32]},
            "dataset": {"builtin": "digits"},
            "hyperparameters": {"epochs": 30, "batch_size": 32},
        }
        body = json.dumps({"type": "training", "spec": spec}).encode()
        with request("POST", f"{url}/v1/jobs", key, body, {"Content-Type": "application/json"}) as response:
            job_id = json.loads(response.read())["id"]

        def job() -> dict:
            with request("GET", f"{url}/v1/jobs/{job_id}", key) as response:
                return json.loads(response.read())

        eventually(lambda: job()["status"] == "running", 120, lambda: f"the job to run: {job()}")
        _child_running(up, "-m workers").kill()
        up.read_until(r"worker .*was killed by SIGKILL unexpectedly; restarting in 1 s")
        up.read_until(r"^\s+worker\s+restarted")
        eventually(lambda: job()["attempts"] == 2 and job()["status"] == "running", 120, lambda: f"a rerun: {job()}")

        (redis,) = [p for p in psutil.Process(up.process.pid).children() if "redis-server" in " ".join(p.cmdline())]
        redis.kill()
        up.read_until(r"redis stopped unexpectedly; restarting in 1 s")
        up.read_until(r"^\s+redis\s+restarted")

        done = eventually(lambda: (j := job())["status"] in ("succeeded", "failed") and j, 240, lambda: str(job()))
        assert done["status"] == "succeeded", done

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=5) as response:
                    return response.status == 200
            except OSError:
                return False

        eventually(ready, 60, "/readyz to answer 200 again")
        assert up.interrupt() == 0
    finally:
        _kill_leftovers(data_dir)
        shutil.rmtree(data_dir, ignore_errors=True)
