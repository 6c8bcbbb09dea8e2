"""The embedded servers of the local stack, for real: each is started in a temporary folder,
used, stopped (its port closed, no process left) and started again on the same folder,
where it finds what was written before."""

from __future__ import annotations

import json
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import psutil
import pytest
import redis
from botocore.exceptions import ClientError
from sqlalchemy import create_engine, text

from core import ports
from infra.embedded import EmbeddedServer, EmbeddedServerError
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.redis import EmbeddedRedis
from infra.embedded.s3 import EmbeddedS3
from tests.support.eventually import eventually

ServerT = TypeVar("ServerT", bound=EmbeddedServer)


@pytest.fixture
def stopper() -> Iterator[list[EmbeddedServer]]:
    """Servers registered here are stopped after the test, whatever happened."""
    servers: list[EmbeddedServer] = []
    yield servers
    for server in servers:
        server.stop()


def started(stopper: list[EmbeddedServer], server: ServerT) -> ServerT:
    stopper.append(server)
    server.start()
    return server


def stop_and_check_gone(server: EmbeddedServer) -> None:
    """Stop ``server``; afterwards its ports are free and none of its processes runs."""
    assert server.is_running() and server.pid is not None
    main = psutil.Process(server.pid)
    tree = [main, *main.children(recursive=True)]
    server.stop()
    assert not server.is_running()
    assert [p.pid for p in tree if alive(p)] == []
    ours = {p.pid for p in tree}
    for port in server.ports.values():
        # another stack (a concurrent test run) may legitimately take the port at once
        assert ports.is_free(port) or not listeners(port) & ours, f"port {port} still ours"
    assert processes_mentioning(server.data_dir) == []


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def listeners(port: int) -> set[int]:
    connections = psutil.net_connections("tcp")
    return {c.pid for c in connections if c.status == psutil.CONN_LISTEN and c.laddr.port == port and c.pid}


def processes_mentioning(path: Path) -> list[int]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(path) in arg for arg in process.info["cmdline"] or []):
            found.append(process.pid)
    return found


# --- PostgreSQL ---------------------------------------------------------------------------


@pytest.fixture
def postgres_dir() -> Iterator[Path]:
    """A folder outside pytest's base temp: each pytest session resets that one to mode 0700,
    which would lock out the unprivileged user PostgreSQL runs as when the tests run as root."""
    path = Path(tempfile.mkdtemp(prefix="maas-test-postgres-"))
    yield path / "postgres"
    shutil.rmtree(path, ignore_errors=True)


def test_postgres_serves_sql_and_keeps_its_data(postgres_dir: Path, stopper: list[EmbeddedServer]) -> None:
    server = started(stopper, EmbeddedPostgres(postgres_dir))
    assert server.url == f"postgresql+psycopg://postgres@127.0.0.1:{server.port}/postgres"
    maas_url = server.create_database("maas")
    assert server.create_database("maas") == maas_url  # a second time is a no-op
    engine = create_engine(maas_url)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT 1")).scalar() == 1
        conn.execute(text("CREATE TABLE kept (value text)"))
        conn.execute(text("INSERT INTO kept VALUES ('before restart')"))
    engine.dispose()
    stop_and_check_gone(server)

    again = started(stopper, EmbeddedPostgres(postgres_dir))
    engine = create_engine(again.url_for("maas"))
    with engine.connect() as conn:
        assert conn.execute(text("SELECT value FROM kept")).scalars().all() == ["before restart"]
    engine.dispose()
    stop_and_check_gone(again)


# --- Redis --------------------------------------------------------------------------------


def test_redis_answers_and_keeps_its_data(tmp_path: Path, stopper: list[EmbeddedServer]) -> None:
    server = started(stopper, EmbeddedRedis(tmp_path / "redis"))
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(server.url)
    assert client.ping()
    client.set("maas:kept", "before restart")
    client.close()
    stop_and_check_gone(server)

    again = started(stopper, EmbeddedRedis(tmp_path / "redis"))
    client = redis.Redis.from_url(again.url)
    assert client.get("maas:kept") == b"before restart"
    client.close()
    stop_and_check_gone(again)


def test_a_restart_reuses_the_saved_ports(tmp_path: Path, stopper: list[EmbeddedServer]) -> None:
    # a port nobody prefers, so that no concurrent test run takes it in between
    port = ports.pick_port()
    save_port(tmp_path / "redis", port)
    server = started(stopper, EmbeddedRedis(tmp_path / "redis"))
    assert server.port == port
    server.stop()
    again = started(stopper, EmbeddedRedis(tmp_path / "redis"))
    assert again.port == port


def test_a_restart_moves_to_another_port_when_the_saved_one_is_taken(
    tmp_path: Path, stopper: list[EmbeddedServer]
) -> None:
    port = ports.pick_port()
    save_port(tmp_path / "redis", port)
    server = started(stopper, EmbeddedRedis(tmp_path / "redis"))
    redis.Redis.from_url(server.url).set("maas:kept", "yes")
    server.stop()
    with socket.socket() as squatter:
        # the port may still hold TIME_WAIT leftovers of the connections just closed
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        again = started(stopper, EmbeddedRedis(tmp_path / "redis"))
        assert again.port != port
        assert redis.Redis.from_url(again.url).get("maas:kept") == b"yes"
        again.stop()


def save_port(data_dir: Path, port: int) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "state.json").write_text(json.dumps({"ports": {"port": port}}))


def test_a_data_folder_in_use_is_refused(tmp_path: Path, stopper: list[EmbeddedServer]) -> None:
    started(stopper, EmbeddedRedis(tmp_path / "redis"))
    with pytest.raises(EmbeddedServerError, match="in use"):
        started(stopper, EmbeddedRedis(tmp_path / "redis"))


def test_a_failed_start_says_why_with_the_server_log(tmp_path: Path, stopper: list[EmbeddedServer]) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    (data / "appendonly.aof").write_text("this is not an append-only file\n")
    server = EmbeddedRedis(data)
    with pytest.raises(EmbeddedServerError, match="exited with code") as failure:
        started(stopper, server)
    assert "last lines of" in str(failure.value)
    assert "append only file" in str(failure.value).lower()
    assert not server.is_running()


def test_an_explicit_port_that_is_taken_is_an_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        with pytest.raises(EmbeddedServerError, match=f"port {taken} is already in use"):
            EmbeddedRedis(tmp_path / "redis", port=taken).start()


# --- S3 (SeaweedFS) -----------------------------------------------------------------------


def test_s3_stores_objects_and_keeps_them(tmp_path: Path, stopper: list[EmbeddedServer]) -> None:
    server = started(stopper, EmbeddedS3(tmp_path / "s3"))
    assert server.url == f"http://127.0.0.1:{server.port}"
    assert server.access_key and server.secret_key
    s3 = server.client()
    s3.create_bucket(Bucket="kept")
    s3.put_object(Bucket="kept", Key="a/b.txt", Body=b"before restart")
    assert s3.get_object(Bucket="kept", Key="a/b.txt")["Body"].read() == b"before restart"
    credentials = (server.access_key, server.secret_key)
    stop_and_check_gone(server)

    again = started(stopper, EmbeddedS3(tmp_path / "s3"))
    assert (again.access_key, again.secret_key) == credentials
    assert again.client().get_object(Bucket="kept", Key="a/b.txt")["Body"].read() == b"before restart"
    stop_and_check_gone(again)


def test_s3_rejects_requests_not_signed_with_its_credentials(tmp_path: Path, stopper: list[EmbeddedServer]) -> None:
    server = started(stopper, EmbeddedS3(tmp_path / "s3"))
    server.secret_key = "not-the-secret"
    with pytest.raises(ClientError):
        server.client().list_buckets()


def test_s3_listens_only_on_ports_it_was_given(tmp_path: Path, stopper: list[EmbeddedServer]) -> None:
    server = started(stopper, EmbeddedS3(tmp_path / "s3"))
    expected = {port + offset for port in server.ports.values() for offset in (0, 10000)}
    assert server.pid is not None

    def on_every_port() -> set[tuple[str, int]]:
        # the admin server comes up a moment after S3 answers
        listening = listening_sockets(server.pid)
        return listening if {port for _, port in listening} == expected else set()

    listening = eventually(
        on_every_port, 10, lambda: f"ports {expected}: listening on {listening_sockets(server.pid)}", interval_s=0.2
    )
    assert {port for _, port in listening} == expected
    assert {ip for ip, _ in listening} == {"127.0.0.1"}


def listening_sockets(pid: int) -> set[tuple[str, int]]:
    connections = psutil.Process(pid).net_connections("tcp")
    return {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}


# --- ports --------------------------------------------------------------------------------


def test_a_free_standard_port_is_preferred_and_a_taken_one_avoided() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        assert not ports.is_free(taken)
        chosen = ports.pick_port(taken)
        assert chosen != taken and ports.is_free(chosen)
    assert ports.pick_port(taken) == taken


def test_a_paired_port_must_be_free_too() -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        chosen = ports.pick_port(taken - 10, paired_offset=10)
        assert chosen != taken - 10
        assert ports.available(chosen, paired_offset=10)
