"""The broker and PostgreSQL restarting under running work: a broker restart with jobs queued and
one running loses none, and a PostgreSQL outage of 10 s during a running job leaves it running
(never failed, never run twice). Each test owns the server it restarts (an embedded Redis or
PostgreSQL), and its own API and worker."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.app import create_app
from core.db import make_engine, session_factory
from infra.embedded.postgres import EmbeddedPostgres
from infra.embedded.redis import EmbeddedRedis
from migrations import runner
from tests.conftest import new_tenant
from tests.support.api import create_job, get_job, job_events, wait_done
from tests.support.eventually import eventually_async
from tests.support.processes import Worker

pytestmark = pytest.mark.slow
OUTAGE_S = 10


def _ran_once(history: list[dict]) -> None:
    statuses = [e["data"]["status"] for e in history if e["type"] == "status"]
    assert statuses.count("running") == 1, statuses
    assert [s for s in statuses if s in ("succeeded", "failed", "canceled")] == ["succeeded"], statuses


async def _job(api, tenant, seconds: float, steps: int) -> str:
    body = {"type": "test.checkpointed", "spec": {"seconds": seconds, "steps": steps}}
    response = await create_job(api, tenant, body)
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def _reaches_step(api, tenant, job_id: str, step: int) -> None:
    async def reached() -> bool:
        progress = (await get_job(api, tenant, job_id))["progress"]
        return bool(progress) and progress["step"] >= step

    await eventually_async(reached, 60, f"job {job_id} to reach step {step}")


async def test_a_broker_restart_loses_no_queued_or_running_job(aiohttp_client, settings, tenant, tmp_path):
    redis = EmbeddedRedis(tmp_path / "redis")
    redis.start()
    # a message lost with the broker is sent again by the reconciler after redispatch_after_s
    own = settings.model_copy(update={"broker_url": redis.url, "redispatch_after_s": 5, "reconcile_interval_s": 1})
    api = await aiohttp_client(create_app(own))
    worker = Worker(own, "test-recovery", tmp_path / "worker.log", concurrency=1)
    try:
        running = await _job(api, tenant, seconds=6, steps=6)
        queued = [await _job(api, tenant, seconds=0.5, steps=2) for _ in range(3)]
        await _reaches_step(api, tenant, running, 2)
        assert [(await get_job(api, tenant, j))["status"] for j in queued] == ["queued"] * 3

        redis.stop()
        await asyncio.sleep(2)
        redis.start()

        finished = [await wait_done(api, tenant, j, timeout_s=120) for j in (running, *queued)]
    finally:
        worker.stop()
        redis.stop()
    for job in finished:
        assert job["status"] == "succeeded" and job["attempts"] == 1, job
        _ran_once(await job_events(api, tenant, job["id"]))


@pytest.fixture
def own_postgres(settings) -> Iterator[tuple[EmbeddedPostgres, str]]:
    # outside pytest's base temp: PostgreSQL runs as an unprivileged user when the tests run as root
    folder = Path(tempfile.mkdtemp(prefix="maas-test-pg-restart-"))
    server = EmbeddedPostgres(folder / "postgres")
    try:
        server.start()
        url = server.create_database("maas")
        runner.upgrade(url)
        yield server, url
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def test_a_postgres_outage_during_a_running_job_neither_fails_nor_repeats_it(
    aiohttp_client, settings, own_postgres, tmp_path
):
    server, url = own_postgres
    own = settings.model_copy(update={"database_url": url})
    engine = make_engine(own)
    tenant = new_tenant(session_factory(engine))
    api = await aiohttp_client(create_app(own))
    worker = Worker(own, "test-recovery", tmp_path / "worker.log", concurrency=1)
    try:
        job_id = await _job(api, tenant, seconds=8, steps=16)
        await _reaches_step(api, tenant, job_id, 3)
        server.stop()
        await asyncio.sleep(OUTAGE_S)
        server.start()
        done = await wait_done(api, tenant, job_id, timeout_s=120)
    finally:
        worker.stop()
        engine.dispose()
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert done["result"]["resumed_from"] == 0  # the first attempt went on: nothing was re-run
    history = await job_events(api, tenant, job_id)
    _ran_once(history)
    steps = [e["data"]["step"] for e in history if e["type"] == "checkpoint"]
    assert sorted(set(steps)) == list(range(1, 17)), steps
