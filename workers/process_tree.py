"""Child processes a job starts (torchrun and the like), and how they are stopped: the whole tree.

Each child leads its own process group. Stopping it snapshots the tree (the group
and every descendant, including ones that left the group), sends SIGTERM, waits
``grace_s``, then SIGKILLs whatever is still alive, so nothing is left behind even
when a grandchild ignores SIGTERM or its parent already exited.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
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


def stop_tree(root_pid: int, grace_s: float) -> list[int]:
    """SIGTERM the tree, SIGKILL survivors after ``grace_s``; the pids that had to be killed."""
    processes = tree_of(root_pid)
    _signal_all(processes, signal.SIGTERM)
    _, alive = psutil.wait_procs(processes, timeout=grace_s)
    # descendants that appeared during the grace period are part of the tree too
    alive += [p for p in tree_of(root_pid) if p.pid not in {a.pid for a in alive}]
    _signal_all(alive, signal.SIGKILL)
    psutil.wait_procs(alive, timeout=5)
    return [p.pid for p in alive]


class ChildProcess:
    """A command in its own process group, its output read line by line."""

    def __init__(self, args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None):
        self.args = args
        self.popen = subprocess.Popen(
            args,
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


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) for pid in pids):
            return True
        time.sleep(0.05)
    return False
