"""``maas up``: the whole platform on one machine, in one terminal.

For each service the settings leave unset (database, broker, S3 endpoint) an embedded
server is started under ``settings.data_dir``; then the database is migrated, the bucket
created and, on the first start, a tenant "default" with an API key whose key is printed
once. The API, one Celery worker and one model server (``python -m serving``) run as child
processes configured through MAAS_* variables. While it runs it supervises: a child or an
embedded server that dies is restarted (with backoff, ``infra.supervision``) and the console says
why, instead of the whole stack stopping. Ctrl-C or SIGTERM stops everything in order: the API,
the worker (its running jobs checkpoint and go back to the queue, see ``workers.preemption``),
the model server (it drains), then the servers. This module owns that orchestration and what it
prints.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from core import ports
from core.settings import ENV_PREFIX, SERVICE_FIELDS, STACK_FILE, Settings, to_env
from infra.embedded import EmbeddedServer, EmbeddedServerError, read_tail, stop_process_tree, write_private
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.redis import EmbeddedRedis
from infra.embedded.s3 import EmbeddedS3
from infra.supervision import Backoff

Out = Callable[[str], None]
ServerT = TypeVar("ServerT", bound=EmbeddedServer)

DATABASE = "maas"
DEFAULT_TENANT = "default"
SERVER_START_TIMEOUT_S = 60
CHILD_READY_TIMEOUT_S = 60
API_STOP_TIMEOUT_S = 10
# a worker's running jobs get preempt_grace_s to checkpoint and go back to the queue, then
# cancel_grace_s for their processes to stop: its stop timeout covers both
WORKER_STOP_MARGIN_S = 10
# a model server drains on SIGTERM: its replicas serve while the APIs re-route, then finish their queues
SERVING_STOP_TIMEOUT_S = 30
POLL_S = 0.25
HEALTH_TIMEOUT_S = 2
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class _Stop(BaseException):
    """Stopping was requested (a signal, or the caller's event) while starting up."""


class StartupFailed(RuntimeError):
    """A piece of the stack did not come up."""


def _print(line: str) -> None:
    print(line, flush=True)


def run_up(settings: Settings, *, out: Out = _print, stop: threading.Event | None = None) -> int:
    """Run the local stack until Ctrl-C / SIGTERM (or ``stop`` is set): 0, or 1 when a piece failed."""
    stack = LocalStack(settings, out, stop)
    with stack.handling_signals():
        try:
            return stack.run()
        except _Stop:
            return 0
        except (StartupFailed, EmbeddedServerError) as exc:
            out(f"maas up failed: {exc}")
            return 1
        finally:
            stack.stop_all()


@dataclass
class _Child:
    name: str
    argv: list[str]
    settings: Settings
    process: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int
    stop_timeout_s: float
    backoff: Backoff


class LocalStack:
    """The servers and child processes of one ``maas up``, in start order."""

    def __init__(self, settings: Settings, out: Out, stop: threading.Event | None = None) -> None:
        self.settings = settings.model_copy(update={"data_dir": settings.data_dir.expanduser()})
        self.out = out
        self._stop_event = stop
        self._signalled = False
        self._handling_signals = False
        self.servers: list[EmbeddedServer] = []
        self.children: list[_Child] = []
        self._server_backoff: dict[str, Backoff] = {}

    # --- the sequence ----------------------------------------------------------------------

    def run(self) -> int:
        self.out(f"maas up  (data: {_display_path(self.settings.data_dir)})")
        settings = self.start_services()
        key = self.prepare(settings)
        settings = self.start_children(settings)
        self._publish(settings)
        self._print_summary(settings, key)
        return self.watch()

    def start_services(self) -> Settings:
        """Start embedded servers for the unset services; return the completed settings."""
        s = self.settings
        data = s.data_dir
        urls: dict[str, str | None] = {}
        if not s.database_url:
            postgres = self._start_server(EmbeddedPostgres(data / "postgres"))
            urls["database_url"] = postgres.create_database(DATABASE)
        else:
            self._external("postgres", s.database_url)
        if not s.broker_url:
            urls["broker_url"] = self._start_server(EmbeddedRedis(data / "redis")).url
        else:
            self._external("broker", s.broker_url)
        if s.s3_endpoint_url is None:  # "" means AWS
            store = self._start_server(EmbeddedS3(data / "s3"))
            urls |= {
                "s3_endpoint_url": store.url,
                "s3_access_key": store.access_key,
                "s3_secret_key": store.secret_key,
            }
        else:
            self._external("s3", s.s3_endpoint_url or "AWS")
        return s.with_services(**urls)

    def prepare(self, settings: Settings) -> str | None:
        """Migrate, create the bucket and, on the first start, a tenant and key (returned)."""
        from core.artifact_store import ArtifactStore
        from migrations import runner

        assert settings.database_url is not None
        runner.upgrade(settings.database_url)
        self._line("database", "migrated", f"revision {runner.current(settings.database_url)}")
        self._checkpoint()
        ArtifactStore(settings).ensure_bucket()
        self._line("bucket", "ready", settings.s3_bucket)
        self._checkpoint()
        return self._first_key(settings)

    def start_children(self, settings: Settings) -> Settings:
        """Start the API, the worker and the model server; return the settings with the API port actually used."""
        settings = self._with_free_api_port(settings)
        api = self._spawn("api", [sys.executable, "-m", "api"], settings, API_STOP_TIMEOUT_S)
        self._wait_ready(api, lambda: _healthy(_api_url(settings)), required=True)
        node = f"maas-up-{os.getpid()}@{socket.gethostname()}"
        worker_argv = [sys.executable, "-m", "workers", "--hostname", node]
        worker_stop_s = settings.preempt_grace_s + settings.cancel_grace_s + WORKER_STOP_MARGIN_S
        worker = self._spawn("worker", worker_argv, settings, worker_stop_s)
        with _celery_control(settings) as control:
            self._wait_ready(worker, partial(_answers_ping, control, node), required=False)
        serving = self._spawn("serving", [sys.executable, "-m", "serving"], settings, SERVING_STOP_TIMEOUT_S)
        with _model_server_rows(settings) as registered:
            self._wait_ready(serving, partial(registered, serving.process.pid), required=False)
        return settings

    def watch(self) -> int:
        """Supervise until a stop request (0): restart what dies, with backoff. 1 when an embedded
        server can only come back on another port (the children would not find it)."""
        while not self._stop_requested():
            now = time.monotonic()
            for server in self.servers:
                backoff = self._server_backoff.setdefault(server.name, Backoff(started_at=now))
                if not server.is_running() and not backoff.waiting:
                    delay = backoff.died(now)
                    self.out(f"{server.name} stopped unexpectedly; restarting in {delay:g} s. Last lines:")
                    self.out(server.log_tail())
                if backoff.due(now) and not self._restart_server(server, backoff):
                    return 1
            for child in self.children:
                if (code := child.process.poll()) is not None and not child.backoff.waiting:
                    delay = child.backoff.died(now)
                    what = f"{_exit_description(code)} unexpectedly; restarting in {delay:g} s"
                    self.out(self._death_message(child, what))
                if child.backoff.due(now):
                    self._respawn(child)
            time.sleep(POLL_S)
        return 0

    def _restart_server(self, server: EmbeddedServer, backoff: Backoff) -> bool:
        """Start ``server`` again on its port; False when it came back elsewhere."""
        before = server.url
        server.stop()  # reap what the dead one left
        try:
            server.start(SERVER_START_TIMEOUT_S)
        except EmbeddedServerError as exc:
            delay = backoff.died(time.monotonic())
            self.out(f"{server.name} did not restart ({exc}); trying again in {delay:g} s")
            return True
        backoff.started(time.monotonic())
        if server.url != before:
            self.out(f"{server.name} came back on another port ({server.url}, was {before}): run maas up again")
            return False
        self._line(server.name, "restarted", f"127.0.0.1:{server.port}")
        return True

    def _publish(self, settings: Settings) -> None:
        """Tell other ``maas`` commands on this machine where the running services are."""
        services = {name: getattr(settings, name) for name in SERVICE_FIELDS}
        services["api_url"] = _api_url(settings)
        write_private(self.settings.data_dir / STACK_FILE, json.dumps(services, indent=2))

    def stop_all(self) -> None:
        """Stop the children in start order (API first, model server last), then the servers in reverse start order."""
        self._ignore_signals()
        (self.settings.data_dir / STACK_FILE).unlink(missing_ok=True)
        if self.children or self.servers:
            self.out("stopping ...")
        for child in self.children:
            code = stop_process_tree(child.process, signal.SIGTERM, child.stop_timeout_s)
            self._line(child.name, "stopped", "" if code == 0 else f"({_exit_description(code)})")
        self.children.clear()
        for server in reversed(self.servers):
            server.stop()
            self._line(server.name, "stopped")
        self.servers.clear()

    # --- signals ---------------------------------------------------------------------------

    @contextmanager
    def handling_signals(self) -> Iterator[None]:
        """While running: a first SIGINT/SIGTERM asks to stop (after the current step), a second
        one interrupts that step. Only the main thread can install handlers; elsewhere the
        caller's ``stop`` event is the way to stop."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        self._handling_signals = True
        try:
            yield
        finally:
            self._handling_signals = False
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signalled:
            self._ignore_signals()
            raise _Stop
        self._signalled = True

    def _ignore_signals(self) -> None:
        # stopping must not be interrupted by another Ctrl-C: that would leave servers running
        if self._handling_signals:
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_IGN)

    def _stop_requested(self) -> bool:
        return self._signalled or (self._stop_event is not None and self._stop_event.is_set())

    def _checkpoint(self) -> None:
        if self._stop_requested():
            raise _Stop

    # --- the pieces ------------------------------------------------------------------------

    def _start_server(self, server: ServerT) -> ServerT:
        self._line(server.name, "starting")
        began = time.monotonic()
        self.servers.append(server)
        server.start(SERVER_START_TIMEOUT_S)
        elapsed = time.monotonic() - began
        detail = f"({elapsed:.1f} s, data: {_display_path(server.data_dir)})"
        self._line(server.name, "ready", f"127.0.0.1:{server.port}  {detail}")
        self._checkpoint()
        return server

    def _external(self, name: str, url: str) -> None:
        parts = urlsplit(url)
        where = f"{parts.hostname}:{parts.port}" if parts.hostname else url
        self._line(name, "external", where)

    def _first_key(self, settings: Settings) -> str | None:
        from sqlalchemy import select

        from core.api_keys import create_key, create_tenant
        from core.db import make_engine, session_factory
        from core.models import Tenant

        engine = make_engine(settings)
        try:
            with session_factory(engine)() as session:
                existing = session.scalar(select(Tenant.name).order_by(Tenant.created_at).limit(1))
                if existing is not None:
                    hint = f"another key: maas admin keys create --tenant {shlex.quote(existing)}"
                    self._line("tenant", "exists", f"{existing!r}; {hint}")
                    return None
                created = create_key(session, create_tenant(session, DEFAULT_TENANT), "default")
                session.commit()
        finally:
            engine.dispose()
        self._line("tenant", "created", f"{DEFAULT_TENANT!r} with API key {created.prefix}...")
        return created.key

    def _with_free_api_port(self, settings: Settings) -> Settings:
        port = settings.api_port
        if not ports.is_free(port, settings.api_host):
            chosen = ports.pick_port(port, host=settings.api_host)
            self._line("api", "note", f"port {port} is taken, using {chosen}")
            settings = settings.model_copy(update={"api_port": chosen})
        grpc_host, grpc_port = settings.grpc_host or settings.api_host, settings.grpc_port
        if settings.grpc_enabled and not ports.is_free(grpc_port, grpc_host):  # 0 too: the summary names the port
            chosen = ports.pick_port(grpc_port or None, host=grpc_host, avoid={settings.api_port})
            if grpc_port:
                self._line("api", "note", f"gRPC port {grpc_port} is taken, using {chosen}")
            settings = settings.model_copy(update={"grpc_port": chosen})
        return settings

    def _spawn(self, name: str, argv: list[str], settings: Settings, stop_timeout_s: float) -> _Child:
        self._line(name, "starting")
        log_path = settings.data_dir / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        process, offset = _popen_logged(argv, settings, log_path)
        child = _Child(name, argv, settings, process, log_path, offset, stop_timeout_s, Backoff())
        child.backoff.started(time.monotonic())
        self.children.append(child)
        return child

    def _respawn(self, child: _Child) -> None:
        child.process, child.log_offset = _popen_logged(child.argv, child.settings, child.log_path)
        child.backoff.started(time.monotonic())
        self._line(child.name, "restarted", f"(pid {child.process.pid}, log: {_display_path(child.log_path)})")

    def _wait_ready(self, child: _Child, ready: Callable[[], bool], *, required: bool) -> None:
        began = time.monotonic()
        deadline = began + CHILD_READY_TIMEOUT_S
        log = f"log: {_display_path(child.log_path)}"
        while time.monotonic() < deadline:
            self._checkpoint()
            if (code := child.process.poll()) is not None:
                raise StartupFailed(self._death_message(child, _exit_description(code)))
            if ready():
                self._line(child.name, "ready", f"({time.monotonic() - began:.1f} s, {log})")
                return
            time.sleep(POLL_S)
        if required:
            raise StartupFailed(self._death_message(child, f"not ready after {CHILD_READY_TIMEOUT_S} s"))
        self._line(child.name, "running", f"(not answering yet, {log})")

    # --- output ----------------------------------------------------------------------------

    def _line(self, name: str, status: str, detail: str = "") -> None:
        self.out(f"  {name:<9} {status:<8} {detail}".rstrip())

    def _print_summary(self, settings: Settings, key: str | None) -> None:
        url = _api_url(settings)
        self.out("")
        self.out(f"maas is running: {url}")
        if settings.grpc_enabled:
            grpc_host = _client_host(settings.grpc_host or settings.api_host)
            self.out(f"  gRPC (Open Inference Protocol): {grpc_host}:{settings.grpc_port}")
        if key is not None:
            self.out(f"  API key (tenant {DEFAULT_TENANT!r}; shown only now, keep it):")
            self.out(f"    {key}")
            self.out(f"  try: curl -H 'Authorization: Bearer {key}' {url}/v1/files")
        self.out("Press Ctrl-C to stop.")

    def _death_message(self, child: _Child, what: str) -> str:
        tail = read_tail(child.log_path, child.log_offset)
        return f"{child.name} {what}; last lines of {_display_path(child.log_path)}:\n{tail}"


def _popen_logged(argv: list[str], settings: Settings, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` with its output appended to ``log_path``; the process and where its output starts."""
    with open(log_path, "ab") as log:
        offset = log.tell()
        log.write(f"--- {datetime.now():%Y-%m-%d %H:%M:%S} maas up: {' '.join(argv)}\n".encode())
        log.flush()
        # own session: Ctrl-C reaches only us, and we stop the children in order
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_child_env(settings),
            start_new_session=True,
        )
    return process, offset


def _child_env(settings: Settings) -> dict[str, str]:
    # our own MAAS_* variables are dropped: the child must see the completed settings only
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(to_env(settings))
    if (PROJECT_ROOT / "pyproject.toml").exists():
        # a source checkout: the children import the same code as we do, wherever we run from
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH")) if p)
    return env


@contextmanager
def _celery_control(settings: Settings) -> Iterator[Any]:
    from core.broker import create_celery

    app = create_celery(settings)
    try:
        yield app.control
    finally:
        app.close()


@contextmanager
def _model_server_rows(settings: Settings) -> Iterator[Callable[[int], bool]]:
    """``registered(pid)``: whether the model server of process ``pid`` on this machine has its row in
    ``model_servers`` (it listens, and the APIs can route to it)."""
    from sqlalchemy import select
    from sqlalchemy.exc import SQLAlchemyError

    from core.db import make_engine
    from core.models import ModelServerRecord

    engine = make_engine(settings)

    def registered(pid: int) -> bool:
        mine = select(ModelServerRecord.id).where(
            ModelServerRecord.pid == pid, ModelServerRecord.hostname == socket.gethostname()
        )
        try:
            with engine.connect() as connection:
                return connection.execute(mine).first() is not None
        except SQLAlchemyError:
            return False

    try:
        yield registered
    finally:
        engine.dispose()


def _exit_description(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _answers_ping(control: Any, node: str) -> bool:
    return bool(control.ping(destination=[node], timeout=0.5))


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _api_url(settings: Settings) -> str:
    return f"http://{_client_host(settings.api_host)}:{settings.api_port}"


def _healthy(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=HEALTH_TIMEOUT_S) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _display_path(path: Path) -> str:
    try:
        return "~/" + str(path.relative_to(Path.home()))
    except ValueError:
        return str(path)
