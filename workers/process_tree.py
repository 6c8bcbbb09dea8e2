"""Child processes a job starts (torchrun and the like), and how they are stopped: the whole tree.

Each child leads its own process group. Stopping it snapshots the tree (the group
and every descendant, including ones that left the group), sends SIGTERM, waits
``grace_s``, then SIGKILLs whatever is still alive, so nothing is left behind even
when a grandchild ignores SIGTERM or its parent already exited.

When the process that started a child dies without stopping it (a worker killed with
SIGKILL), Linux sends the child SIGTERM (``PR_SET_PDEATHSIG``, set by a few lines of
Python that then exec the command), so torchrun stops its ranks instead of training on
for a job that has been handed to another worker.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil


def _group_members(pgid: int) -> list[psutil.Process]:
    members = []
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if os.getpgid(process.pid) == pgid:
                members.append(process)
    return members


def tree_of(root_pid: int) -> list[psutil.Process]:
    """The root, its descendants and its process group, without duplicates."""
    found: dict[int, psutil.Process] = {}
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(root_pid)
        found[root.pid] = root
        for child in root.children(recursive=True):
            found[child.pid] = child
    for member in _group_members(root_pid):
        found.setdefault(member.pid, member)
    return list(found.values())


def _signal_all(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.send_signal(sig)


def _running(process: psutil.Process) -> bool:
    # an orphan killed under a parent that does not reap stays a zombie: it is gone all the same
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    """Wait until every process exited (reaping our own children); the ones still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        psutil.wait_procs(processes, timeout=0)  # reaps those that are our children
        alive = [p for p in processes if _running(p)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)


def stop_tree(root_pid: int, grace_s: float) -> list[int]:
    """SIGTERM the tree, SIGKILL survivors after ``grace_s``; the pids that had to be killed."""
    processes = tree_of(root_pid)
    _signal_all(processes, signal.SIGTERM)
    alive = _wait_gone(processes, grace_s)
    # descendants that appeared during the grace period are part of the tree too
    alive += [p for p in tree_of(root_pid) if p.pid not in {a.pid for a in alive} and _running(p)]
    _signal_all(alive, signal.SIGKILL)
    _wait_gone(alive, 5)
    return [p.pid for p in alive]


# Runs before the command, in the child: ask for SIGTERM when the parent dies, and exit at once
# if it already has (it could die between the fork and the prctl). Then become the command.
_PARENT_DEATH_SIGNAL = """
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def with_parent_death_signal(args: list[str]) -> list[str]:
    """``args`` run so that they get SIGTERM when this process dies (Linux; elsewhere unchanged).

    Linux ties the signal to the thread that forks: start children from a thread that outlives
    them (the task's own thread does; a short-lived helper thread would not)."""
    if not sys.platform.startswith("linux"):
        return args
    return [sys.executable, "-c", _PARENT_DEATH_SIGNAL, str(os.getpid()), *args]


class ChildProcess:
    """A command in its own process group, its output read line by line."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.args = args
        self.popen = subprocess.Popen(
            with_parent_death_signal(args),
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            errors="replace",
            start_new_session=True,
        )
        self.pid = self.popen.pid

    def lines(self) -> Iterator[str]:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            yield line.rstrip("\n")

    def wait(self) -> int:
        return self.popen.wait()

    def stop(self, grace_s: float) -> list[int]:
        killed = stop_tree(self.pid, grace_s)
        self.popen.wait()
        return killed

    def reap_leftovers(self) -> None:
        """After the leader exited on its own: anything it left in its group goes too."""
        stop_tree(self.pid, grace_s=1.0)
