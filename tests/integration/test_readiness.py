"""/readyz follows its dependencies: 503 naming what is down, 200 again once it is back,
without restarting the API."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from api.app import create_app
from infra.embedded.postgres import EmbeddedPostgres
from migrations import runner

pytestmark = pytest.mark.slow


@pytest.fixture
def own_postgres():
    folder = Path(tempfile.mkdtemp(prefix="maas-readyz-"))
    server = EmbeddedPostgres(folder / "postgres")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def readiness(client) -> tuple[int, dict]:
    response = await client.get("/readyz")
    return response.status, await response.json()


async def test_readyz_follows_postgres_down_and_back(aiohttp_client, settings, own_postgres):
    url = own_postgres.create_database("maas")
    runner.upgrade(url)
    client = await aiohttp_client(create_app(settings.model_copy(update={"database_url": url})))
    assert (await readiness(client))[0] == 200

    own_postgres.stop()
    status, body = await readiness(client)
    assert status == 503
    assert body["detail"] == "unreachable: database"
    assert body["checks"]["database"]["ok"] is False and body["checks"]["broker"]["ok"] is True

    own_postgres.start()
    status, body = await readiness(client)
    assert status == 200, body
    assert all(check["ok"] for check in body["checks"].values())


async def test_readyz_names_the_broker_and_the_store(aiohttp_client, settings):
    broken = settings.model_copy(
        update={"broker_url": "redis://127.0.0.1:1/0", "s3_endpoint_url": "http://127.0.0.1:1"}
    )
    client = await aiohttp_client(create_app(broken))
    status, body = await readiness(client)
    assert status == 503
    assert body["detail"] == "unreachable: broker, store"
    assert (await client.get("/healthz")).status == 200
