"""Preemption: a worker told to stop (SIGTERM: scale-in, a node drain, a spot reclaim) gives its
running jobs back instead of sitting on them until it is killed.

Celery's warm shutdown stops taking messages and waits for the tasks in flight; on its
``worker_shutting_down`` signal the main process sends ``SIGUSR2`` to its pool processes, whose
handler sets :data:`REQUESTED`. Each running job's :class:`PreemptWatch` then calls the
handler's ``on_preempt`` callbacks (training touches its ranks' stop file), and after
``preempt_grace_s`` stops whatever is still running. ``workers.job_runner`` puts the job back in
the queue without using an attempt; the job row, not the broker, records it (a ``preempted`` event).

Only the worker's main process should get SIGTERM (Kubernetes and ``docker stop`` signal PID 1):
a pool process that gets it dies at once, as Celery resets its handler there.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import psutil
from celery import signals

log = logging.getLogger("maas.preemption")

SIGNAL = signal.SIGUSR2
REQUESTED = threading.Event()  # in a pool process: its worker is shutting down


def _requested(_signum: int, _frame: Any) -> None:
    REQUESTED.set()


def _pool_process_started(**_: Any) -> None:
    signal.signal(SIGNAL, _requested)


def _worker_shutting_down(**_: Any) -> None:
    pool = psutil.Process(os.getpid()).children(recursive=False)
    log.info("stopping: asking the jobs of %d pool process(es) to checkpoint and go back to the queue", len(pool))
    for process in pool:
        try:
            process.send_signal(SIGNAL)
        except psutil.Error as exc:
            log.warning("could not signal pool process %s: %s", process.pid, exc)


def install() -> None:
    """Connect the handlers (the worker's main process calls this before it forks its pool)."""
    signals.worker_process_init.connect(_pool_process_started, weak=False)
    signals.worker_shutting_down.connect(_worker_shutting_down, weak=False)


class PreemptWatch(threading.Thread):
    """Waits, while one job (or node share) runs, for the worker to be told to stop; then asks
    the handler to give the job back (``callbacks``) and, ``grace_s`` later, ``stop``s its processes."""

    def __init__(self, name: str, grace_s: float, stop: Callable[[], None], announce: Callable[[], None]):
        super().__init__(name=f"preempt-{name}", daemon=True)
        self.grace_s, self.stop, self.announce = grace_s, stop, announce
        self.callbacks: list[Callable[[], None]] = []
        self.preempted = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not REQUESTED.wait(0.2):
            if self.done.is_set():
                return
        if self.done.is_set():
            return
        self.preempted.set()
        self.announce()
        if not self.callbacks:  # nothing can save this handler's state sooner than its last checkpoint
            self.stop()
            return
        for callback in self.callbacks:
            try:
                callback()
            except Exception:
                log.exception("a preemption callback failed; stopping the job's processes")
                self.stop()
                return
        if not self.done.wait(self.grace_s):
            log.warning("the job did not give itself back within %.0f s: stopping its processes", self.grace_s)
            self.stop()
