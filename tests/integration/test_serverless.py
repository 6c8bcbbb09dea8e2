"""Serverless serving through two real model servers (``python -m serving``) and the real API.

The servers share a scratch database of their own (the session's model server must not take part
in placement) and each has a memory budget that holds ONE of the test models: an embedding table
of 16 MiB, which a server holds twice (its ONNX Runtime session and the single-threaded twin), so
32 MiB and what else its sessions take (about 56 MiB in all, measured), against an 80 MiB budget. What is
checked:

- a deployment with ``min_replicas`` 0 loads on its PUT (initial scale 1), unloads after
  ``idle_timeout_s`` without traffic (the memory its server reports, in its row and its metrics,
  goes back to 0), and 32 requests arriving at zero all succeed after one load;
- three models on two one-model budgets: calling them in turn always succeeds, no server ever
  holds more than its budget, and the pinned one (``min_replicas`` 1) is never the one evicted;
- a model bigger than every budget leaves its deployment ``failed`` with the reason, placed nowhere;
  a request to it is refused at once with that reason, and an asynchronous prediction's wait for a
  cold start (``workers.predictions``) ends on it instead of lasting its budget;
- a deployment under load grows to a second replica on the other server and shrinks back when the
  load falls (one client still calling through the scale-in), with no failed request.
- when the server that runs the placer stops, the other takes the placer lock and places replicas.

The requests at zero rely on the API holding them while a replica loads (``api.cold_start``).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from sqlalchemy import delete, select

from api.app import create_app
from core.artifact_store import ArtifactStore
from core.db import make_engine, session_factory
from core.models import Deployment, ModelReplica, ModelServerRecord, ServingEvent
from core.settings import Settings
from job_types.registry import load_job_types
from migrations import runner
from tests.conftest import Tenant, new_tenant
from tests.support.api import deploy, register_version
from tests.support.eventually import eventually_async
from tests.support.onnx_models import embedding_lookup
from tests.support.processes import ModelServerProcess
from tests.support.services import scratch_database
from workers import predictions
from workers.predictions import PredictionFailed
from workers.runtime import WorkerRuntime

pytestmark = pytest.mark.slow

MIB = 1 << 20
ROWS = 16 * MIB // 16  # a table of 16 MiB (rows of 4 FP32)
# one such model (twice 16 MiB, plus what its sessions take above that: about 56 MiB), never two
BUDGET = 80 * MIB


@pytest.fixture(scope="module")
def serverless(services, settings, tmp_path_factory) -> Iterator[Settings]:
    with scratch_database(services.database_admin_url, "maas_serverless") as url:
        runner.upgrade(url)
        yield settings.model_copy(
            update={
                "database_url": url,
                "data_dir": tmp_path_factory.mktemp("serverless"),
                "inference_threads": 2,  # a twin session per model on any machine: the memory above holds
                "inference_providers": "CPUExecutionProvider",  # no GPU budget, even on a machine with one
                "model_server_poll_s": 0.3,
                "model_server_heartbeat_s": 0.3,
                "autoscale_upscale_delay_s": 1.0,
                "autoscale_downscale_delay_s": 3.0,
                "model_load_retry_s": 2.0,
            }
        )


@pytest.fixture(scope="module")
def db(serverless):
    engine = make_engine(serverless)
    yield session_factory(engine)
    engine.dispose()


@pytest.fixture(scope="module")
def servers(serverless, tmp_path_factory) -> Iterator[list[ModelServerProcess]]:
    started = []
    try:
        for index in range(2):
            folder = tmp_path_factory.mktemp(f"server{index}")
            own = serverless.model_copy(update={"model_server_memory_bytes": BUDGET, "model_cache_dir": folder / "c"})
            started.append(ModelServerProcess(own, folder / "serving.log"))
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
async def api(aiohttp_client, serverless, servers) -> AsyncIterator[TestClient]:
    yield await aiohttp_client(create_app(serverless))


@pytest.fixture
def tenant(db) -> Iterator[Tenant]:
    tenant = new_tenant(db)
    yield tenant
    with db() as session:  # its replicas drain and go: the next test starts with empty servers
        session.execute(delete(Deployment))
        session.commit()


class Watch:
    """Samples, in a thread, what each server holds against its budget: as it reports it, as its rows add up."""

    def __init__(self, db) -> None:
        self.db = db
        self.over_budget: list[tuple[str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Watch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.db() as session:
                for server in session.scalars(select(ModelServerRecord)):
                    placed = session.scalars(
                        select(ModelReplica.memory_bytes).where(
                            ModelReplica.server_id == server.id, ModelReplica.status != "failed"
                        )
                    )
                    held = sum(m or 0 for m in placed)
                    for reported in (server.memory_used_bytes, held):
                        if reported > server.memory_budget_bytes > 0:
                            self.over_budget.append((server.id, reported, server.memory_budget_bytes))
            time.sleep(0.05)


def ids_request(*ids: int) -> dict:
    return {"inputs": [{"name": "ids", "datatype": "INT64", "shape": [1, len(ids)], "data": list(ids)}]}


async def new_model(api, tenant, prefix: str, rows: int = ROWS, **settings) -> str:
    name = f"{prefix}-{secrets.token_hex(3)}"
    await register_version(api, tenant, name, embedding_lookup(rows, 4))
    await deploy(api, tenant, name, 1, **settings)
    return name


async def call(api, tenant, name: str, row: int = 3) -> None:
    answer = await api.post(f"/v2/models/{name}/infer", json=ids_request(row), headers=tenant.headers)
    assert answer.status == 200, f"{name}: {answer.status} {await answer.text()}"
    outputs = (await answer.json())["outputs"]
    assert outputs[0]["data"] == [float(row)] * 4


async def shown(api, tenant, name: str) -> dict:
    response = await api.get(f"/v1/models/{name}/deployment", headers=tenant.headers)
    assert response.status == 200, await response.text()
    return await response.json()


def events(db, action: str | None = None) -> list[ServingEvent]:
    with db() as session:
        query = select(ServingEvent).order_by(ServingEvent.id)
        if action is not None:
            query = query.where(ServingEvent.action == action)
        return list(session.scalars(query))


def memory_used(db) -> dict[str, int]:
    with db() as session:
        return dict(session.execute(select(ModelServerRecord.id, ModelServerRecord.memory_used_bytes)).all())


async def test_scale_to_zero_after_the_idle_timeout_and_back_on_the_next_request(api, tenant, db, servers):
    name = await new_model(api, tenant, "idle", idle_timeout_s=2)

    async def ready_replica() -> dict | None:
        replicas = [r for r in (await shown(api, tenant, name))["replicas"] if r["status"] == "ready"]
        return replicas[0] if replicas else None

    replica = await eventually_async(ready_replica, 90, f"{name} to load on its PUT")
    assert replica["memory_bytes"] >= 2 * ROWS * 16  # measured: the table, once per session
    assert replica["gpu_memory_bytes"] == 0  # a server without a GPU budget counts none
    await call(api, tenant, name)

    async def holding() -> bool:  # what the replica holds now: the reservation, or its measure once the twin opened
        current = await ready_replica()
        return current is not None and memory_used(db).get(replica["model_server"], 0) >= current["memory_bytes"] > 0

    await eventually_async(holding, 10, "the server to report the memory it holds")

    async def unloaded() -> bool:
        return not (await shown(api, tenant, name))["replicas"] and memory_used(db)[replica["model_server"]] == 0

    await eventually_async(unloaded, 30, f"{name} to unload after 2 s idle and its memory to be given back")
    deployment = await shown(api, tenant, name)
    assert deployment["status"] == "pending"  # at zero, not failed
    reasons = [e["reason"] for e in deployment["events"] if e["action"] in ("evict", "unloaded")]
    assert reasons and all(r.startswith("idle: no request for") for r in reasons), deployment["events"]
    server = next(s for s in servers if s.id == replica["model_server"])

    async def metrics_say_so() -> bool:
        async with aiohttp.ClientSession() as session, session.get(f"{server.url}/metrics") as response:
            text = await response.text()
        unloaded = 'maas_replica_unloads_total{reason="idle"} 1.0' in text
        no_gpu = "\nmaas_model_server_gpu_memory_budget_bytes 0.0" in text
        return unloaded and no_gpu and "\nmaas_model_server_memory_bytes 0.0" in text

    await eventually_async(metrics_say_so, 10, "the server's metrics to count the idle unload and hold 0 bytes")

    # 32 requests at zero: all held while ONE replica loads, then all answered
    await asyncio.gather(*(call(api, tenant, name, row=row) for row in range(32)))
    loads = [e for e in (await shown(api, tenant, name))["events"] if e["action"] == "loaded"]
    assert len(loads) == 2, loads  # the PUT's, and one for the 32


async def test_three_models_on_two_one_model_budgets_always_answer_and_the_pinned_one_stays(api, tenant, db, servers):
    pinned = await new_model(api, tenant, "pinned", min_replicas=1)
    others = [await new_model(api, tenant, f"lru{i}") for i in range(2)]
    with Watch(db) as watch:
        for _ in range(3):
            for name in [pinned, *others]:
                await call(api, tenant, name)
    assert watch.over_budget == []
    evicted = {e.model_version_id for e in events(db, "evict")}
    assert evicted, "calling three models on room for two evicted nothing"
    pinned_version = (await shown(api, tenant, pinned))["model_version_id"]
    assert pinned_version not in evicted
    # pinned: ready all along, and never unloaded
    assert pinned_version not in {e.model_version_id for e in events(db, "unloaded")}
    reasons = {e.reason.split(":")[0] for e in events(db, "evict") if e.model_version_id in evicted}
    assert reasons <= {"room", "idle"}, reasons


async def test_a_model_bigger_than_every_budget_fails_with_the_reason(api, tenant, db, servers):
    name = await new_model(api, tenant, "huge", rows=48 * MIB // 16)  # twice 48 MiB: its weights alone

    async def failed() -> dict | None:
        deployment = await shown(api, tenant, name)
        return deployment if deployment["status"] == "failed" else None

    deployment = await eventually_async(failed, 30, f"{name} to fail placement")
    assert "largest model server budget is 80.0 MiB" in deployment["status_reason"]
    assert deployment["replicas"] == []
    assert [e["action"] for e in deployment["events"]] == ["failed"]  # said once, no load attempted
    answer = await api.post(f"/v2/models/{name}/infer", json=ids_request(3), headers=tenant.headers)
    assert answer.status == 503 and "largest model server budget is 80.0 MiB" in (await answer.json())["error"]


async def test_a_prediction_for_a_model_bigger_than_every_budget_fails_with_the_reason_instead_of_waiting(
    api, tenant, serverless, servers
):
    name = f"huge-{secrets.token_hex(3)}"
    version = await register_version(api, tenant, name, embedding_lookup(48 * MIB // 16, 4))
    # run straight after the PUT, the wait may start before the placer has failed it, or after: either way
    # it ends on the placement error, long before its budget
    await deploy(api, tenant, name, 1, min_replicas=0, cold_start_timeout_ms=120_000)
    engine = make_engine(serverless)
    store, job_types = ArtifactStore(serverless), load_job_types(serverless)
    rt = WorkerRuntime(serverless, engine, session_factory(engine), store, job_types, pid=0)  # a worker's, here
    try:
        with pytest.raises(PredictionFailed) as failed:
            await asyncio.to_thread(predictions.infer, rt, version["id"], ids_request(3)["inputs"], 1000)
    finally:
        engine.dispose()
    assert failed.value.code == "load_failed"
    assert "largest model server budget is 80.0 MiB" in failed.value.message


async def test_under_load_a_second_replica_starts_on_the_other_server_and_goes_when_the_load_stops(
    api, tenant, db, servers
):
    name = await new_model(
        api, tenant, "busy", max_replicas=2, target_concurrency=2, max_queue_delay_us=500_000, max_batch_size=32
    )

    async def ready_on() -> set[str]:
        replicas = (await shown(api, tenant, name))["replicas"]
        return {r["model_server"] for r in replicas if r["status"] == "ready"}

    await eventually_async(ready_on, 90, f"{name} to load")
    failures: list[str] = []
    answered = 0

    async def client(stop: asyncio.Event) -> None:
        nonlocal answered
        while not stop.is_set():
            answer = await api.post(f"/v2/models/{name}/infer", json=ids_request(2), headers=tenant.headers)
            if answer.status != 200:
                failures.append(f"{answer.status} {await answer.text()}")
            answered += 1

    burst, trickle = asyncio.Event(), asyncio.Event()
    clients = [asyncio.create_task(client(burst)) for _ in range(15)] + [asyncio.create_task(client(trickle))]

    async def one_left() -> bool:
        return len(await ready_on()) == 1 and len((await shown(api, tenant, name))["replicas"]) == 1

    try:
        both = await eventually_async(lambda: _two(ready_on), 60, f"{name} to grow to a replica on each server")
        assert both == {s.id for s in servers}
        await asyncio.sleep(2)  # both serve a while
        burst.set()  # one client goes on: requests are in flight while a replica drains and unloads
        await asyncio.gather(*clients[:15])
        before = answered
        await eventually_async(one_left, 60, f"{name} to shrink back to one replica")
        assert answered > before  # the trickle was served through the scale-in
    finally:
        burst.set()
        trickle.set()
        await asyncio.gather(*clients)
    assert failures == []
    actions = [e["action"] for e in (await shown(api, tenant, name))["events"]]
    assert "scale_up" in actions and "scale_down" in actions, actions
    await call(api, tenant, name)


async def _two(ready_on) -> set[str] | None:
    servers = await ready_on()
    return servers if len(servers) == 2 else None


async def test_when_the_placing_server_stops_the_other_one_places(api, tenant, db, servers):
    # last in this module: it stops a server
    leader = next(s for s in servers if "places replicas now" in s.log_path.read_text())
    other = next(s for s in servers if s is not leader)
    assert leader.stop() == 0

    def took_over() -> bool:
        return "places replicas now" in other.log_path.read_text()

    await eventually_async(took_over, 30, f"{other.id} to take the placer lock")
    name = await new_model(api, tenant, "after")
    await call(api, tenant, name)
    assert [r["model_server"] for r in (await shown(api, tenant, name))["replicas"]] == [other.id]
