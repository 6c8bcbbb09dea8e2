"""Test-only Celery tasks, imported by test workers with ``--include``; never shipped as features."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from celery import shared_task


@shared_task(name="tests.touch")
def touch(path: str, text: str) -> None:
    # written aside and renamed: a test polling for the file never sees it half-written
    Path(path + ".part").write_text(text)
    os.replace(path + ".part", path)


@shared_task(name="tests.die_once")
def die_once(marker: str, done: str) -> None:
    """Kill the process running it on the first delivery; finish on the redelivery."""
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    Path(done).write_text(str(os.getpid()))
