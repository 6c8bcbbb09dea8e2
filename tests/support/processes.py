"""Child processes for tests (Celery workers, the API): started in their own process group,
stopped with SIGTERM then SIGKILL (or killed outright, as a crash would), and waited for."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from tests.support.eventually import eventually

REPO = Path(__file__).resolve().parents[2]


def inherited_env() -> dict[str, str]:
    """The test process's environment without MAAS_* settings, so a child sees only what it is given."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}


def start(args: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env={**inherited_env(), **env, "PYTHONPATH": str(REPO)},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop(process: subprocess.Popen, grace_s: float = 10) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    with contextlib.suppress(ProcessLookupError):  # children left behind by the group leader
        os.killpg(process.pid, signal.SIGKILL)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the process and its children at once, as a machine crash would: no clean-up runs."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


class Worker:
    """A real Celery worker process (``python -m workers``) with the test job types loaded."""

    def __init__(self, settings, queues: str, log_path: Path, concurrency: int = 2):
        import secrets

        from core.broker import create_celery
        from core.settings import to_env

        self.hostname = f"test-{secrets.token_hex(4)}@localhost"
        self.log_path = log_path
        self.app = create_celery(settings)
        self.process = start(
            [
                "-m",
                "workers",
                "--queues",
                queues,
                "--concurrency",
                str(concurrency),
                "--include",
                "tests.support.worker_tasks",
                "--hostname",
                self.hostname,
            ],
            to_env(settings),
            log_path,
        )
        eventually(
            lambda: self.process.poll() is not None or bool(self.app.control.ping([self.hostname], timeout=0.5)),
            60,
            f"worker {self.hostname} to answer ping",
        )
        if self.process.poll() is not None:
            raise RuntimeError(f"worker exited:\n{log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL the worker and its pool processes at once, as a machine crash would."""
        kill(self.process)

    def stop(self) -> None:
        stop(self.process)
        self.app.close()


class ModelServerProcess:
    """A real model server in a process of its own (``python -m serving``, or ``args`` such as
    ``-m cli.main serve``), ready once its row is in ``model_servers``: it listens, and APIs route to it."""

    def __init__(self, settings, log_path: Path, args: Sequence[str] = ("-m", "serving")):
        from sqlalchemy import select

        from core.db import make_engine
        from core.models import ModelServerRecord
        from core.settings import to_env

        self.log_path = log_path
        self.process = start(list(args), to_env(settings), log_path)
        mine = select(ModelServerRecord.id, ModelServerRecord.url).where(ModelServerRecord.pid == self.process.pid)
        engine = make_engine(settings)

        def registered():  # the (id, url) row, or True when the process died first
            with engine.connect() as connection:
                return self.process.poll() is not None or connection.execute(mine).first()

        try:
            row = eventually(registered, 60, f"model server {' '.join(args)} to register")
        finally:
            engine.dispose()
        if self.process.poll() is not None:
            raise RuntimeError(f"model server exited:\n{log_path.read_text()[-3000:]}")
        self.id, self.url = row.id, row.url

    def stop(self) -> int:
        """SIGTERM (it drains its replicas first, for two routing refresh periods), then wait; the exit code."""
        stop(self.process, grace_s=60)
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL it: no drain, its row and its connections left for the others to notice."""
        kill(self.process)
