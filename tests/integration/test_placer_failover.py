"""The placer outlives a crash (SIGKILL: no drain, no clean-up) or a stall (SIGSTOP: its connections stay
open) of the model server that runs it.

Two ``maas serve`` processes share a scratch database of their own (the session's model server must
not take part in placement). The first one starts alone, so it takes the placer lock
(``serving.placer.PLACER_LOCK``) and gets the pinned model (``min_replicas`` 1); then the second one
starts and the first is killed, or stopped. What is checked:

- PostgreSQL frees the advisory lock when the dead process's connection closes, and the survivor
  takes it (another backend holds it in ``pg_locks``): a deployment PUT afterwards is placed on the
  survivor and serves;
- once the dead server has been silent for ``model_server_timeout_s``, the survivor deletes its row
  (its replicas go with it) and the pinned model, which lived only there, is placed on the survivor:
  requests to it succeed again within that timeout and the time a load takes;
- a stopped leader keeps its connection, so PostgreSQL keeps its lock: once its server has been
  silent for ``model_server_timeout_s`` the survivor terminates that connection, takes the lock and
  re-places the pinned model the same way; resumed, the deposed server does not lead again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import NamedTuple

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import select, text

from api.app import create_app
from core.db import make_engine, session_factory
from core.models import ModelReplica, ModelServerRecord
from core.settings import Settings
from migrations import runner
from serving.placer import LOCK_HOLDER
from tests.conftest import Tenant, new_tenant
from tests.support.api import deploy, infer, json_request, register_version
from tests.support.eventually import eventually_async
from tests.support.onnx_models import tiny_onnx
from tests.support.processes import ModelServerProcess
from tests.support.services import scratch_database

pytestmark = pytest.mark.slow

MAAS_SERVE = ("-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", "0")
TIMEOUT_S = 3.0  # model_server_timeout_s
LOAD_S = 30.0  # a load on the survivor (download, session, warm-up), on a busy machine
TAKEOVER_S = 10.0  # the dead connection noticed, then the survivor's next try (every model_server_heartbeat_s)
X = np.ones((1, 4), dtype=np.float32)  # tiny_onnx answers 0.4 for each of its 3 outputs


@pytest.fixture
def failover(services, settings, tmp_path) -> Iterator[Settings]:
    with scratch_database(services.database_admin_url, "maas_failover") as url:
        runner.upgrade(url)
        yield settings.model_copy(
            update={
                "database_url": url,
                "data_dir": tmp_path / "data",
                "model_server_poll_s": 0.3,
                "model_server_heartbeat_s": 0.3,
                "model_server_timeout_s": TIMEOUT_S,
            }
        )


@pytest.fixture
def db(failover):
    engine = make_engine(failover)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture
def start_server(failover, tmp_path) -> Iterator[Callable[[str], ModelServerProcess]]:
    started: list[ModelServerProcess] = []

    def start(name: str) -> ModelServerProcess:
        folder = tmp_path / name
        folder.mkdir()
        own = failover.model_copy(update={"model_cache_dir": folder / "cache"})
        started.append(ModelServerProcess(own, folder / "serving.log", MAAS_SERVE))
        return started[-1]

    yield start
    for server in started:
        server.stop()


@pytest.fixture
async def api(aiohttp_client, failover) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(failover))


@pytest.fixture
def tenant(db) -> Tenant:
    return new_tenant(db)


def places(server: ModelServerProcess) -> bool:
    return "places replicas now" in server.log_path.read_text()


def lock_holder(db) -> int | None:
    """The PostgreSQL backend (pid) that holds the placer lock in this database, if one does."""
    with db() as session:
        return session.execute(text(LOCK_HOLDER)).scalar()


async def new_model(api, tenant, prefix: str, **settings) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    await register_version(api, tenant, name, tiny_onnx())
    await deploy(api, tenant, name, 1, **settings)
    return name


async def answers(api, tenant, name: str) -> bool:
    response = await infer(api, tenant, name, json_request(X))
    if response.status != 200:
        return False
    assert (await response.json())["outputs"][0]["data"] == pytest.approx([0.4] * 3)
    return True


async def shown(api, tenant, name: str) -> dict:
    response = await api.get(f"/v1/models/{name}/deployment", headers=tenant.headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def placed_on(api, tenant, name: str) -> list[str]:
    return [r["model_server"] for r in (await shown(api, tenant, name))["replicas"]]


class Cluster(NamedTuple):
    leader: ModelServerProcess  # holds the placer lock, and the pinned model's one replica
    follower: ModelServerProcess
    holder: int  # the leader's lock connection: its PostgreSQL backend's pid
    pinned: str  # a model with min_replicas 1


async def cluster(api, tenant, db, start_server) -> Cluster:
    leader = start_server("leader")
    await eventually_async(lambda: places(leader), 30, f"{leader.id} to take the placer lock")
    holder = lock_holder(db)
    assert holder is not None
    pinned = await new_model(api, tenant, "pinned", min_replicas=1)
    assert await eventually_async(lambda: answers(api, tenant, pinned), LOAD_S, f"{pinned} to serve")
    assert await placed_on(api, tenant, pinned) == [leader.id]
    follower = start_server("follower")
    assert not places(follower) and lock_holder(db) == holder
    return Cluster(leader, follower, holder, pinned)


async def moved_from(api, tenant, db, dead: ModelServerProcess, survivor: ModelServerProcess, pinned: str) -> None:
    """The pinned model is placed (for its min_replicas) and served on the survivor, the dead server's rows gone."""
    assert await placed_on(api, tenant, pinned) == [survivor.id]

    def dead_rows_gone() -> bool:
        with db() as session:
            gone = session.get(ModelServerRecord, dead.id) is None
            return gone and not session.scalars(select(ModelReplica).where(ModelReplica.server_id == dead.id)).all()

    await eventually_async(dead_rows_gone, TIMEOUT_S, f"the rows of {dead.id} to be deleted")
    events = (await shown(api, tenant, pinned))["events"]
    assigned = [(e["model_server"], e["reason"]) for e in events if e["action"] == "assign"]
    assert (survivor.id, "min_replicas is 1") in assigned, assigned


async def test_when_the_placing_server_is_killed_the_survivor_places_and_takes_over_its_replicas(
    api, tenant, db, start_server
):
    first, second, holder, pinned = await cluster(api, tenant, db, start_server)
    first.kill()
    killed_at = time.monotonic()
    await eventually_async(lambda: places(second), TAKEOVER_S, f"{second.id} to take the placer lock")
    assert lock_holder(db) not in (None, holder)

    # (a) a deployment made after the crash: placed by the survivor's placer, served there
    after = await new_model(api, tenant, "after")
    assert await eventually_async(lambda: answers(api, tenant, after), LOAD_S, f"{after} to serve")
    assert await placed_on(api, tenant, after) == [second.id]

    # (b) the pinned replica lived only on the killed server: once that server is dead, it is placed again
    left_s = TIMEOUT_S + LOAD_S - (time.monotonic() - killed_at)
    assert await eventually_async(lambda: answers(api, tenant, pinned), left_s, f"{pinned} to serve again")
    await moved_from(api, tenant, db, first, second, pinned)


async def test_when_the_placing_server_stalls_past_the_timeout_the_survivor_deposes_it_and_places(
    api, tenant, db, start_server
):
    # a stopped process keeps its connections open, as a host cut off by the network does (until TCP keepalives
    # notice, hours later): PostgreSQL alone would leave it the lock, and nobody would place anything
    first, second, holder, pinned = await cluster(api, tenant, db, start_server)
    os.killpg(first.process.pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        await eventually_async(
            lambda: places(second), TIMEOUT_S + TAKEOVER_S, f"{second.id} to depose {first.id} and place"
        )
        deposed_by = lock_holder(db)
        assert deposed_by not in (None, holder)
        left_s = TIMEOUT_S + LOAD_S - (time.monotonic() - stopped_at)
        assert await eventually_async(lambda: answers(api, tenant, pinned), left_s, f"{pinned} to serve again")
        await moved_from(api, tenant, db, first, second, pinned)
    finally:
        os.killpg(first.process.pid, signal.SIGCONT)

    # back, the deposed server serves again (what it still holds too), as a follower: it does not take the lock back
    def registered_again() -> bool:
        with db() as session:
            return session.get(ModelServerRecord, first.id) is not None

    await eventually_async(registered_again, TAKEOVER_S, f"{first.id} to register again")
    await asyncio.sleep(1)  # a few of its placer's tries
    assert lock_holder(db) == deposed_by
    assert first.log_path.read_text().count("places replicas now") == 1
    assert await answers(api, tenant, pinned)
