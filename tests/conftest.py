"""Fixtures: real PostgreSQL, broker and S3 (see tests/support/services.py), a migrated
database and a bucket per test session, and a fresh tenant with its own API key per test,
so tests never see each other's objects.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
from aiohttp.test_utils import TestClient

from api.app import create_app
from core.api_keys import create_key, create_tenant
from core.artifact_store import ArtifactStore
from core.db import make_engine, session_factory
from core.settings import Settings
from migrations import runner
from tests.support.processes import ModelServerProcess, Worker
from tests.support.services import ServiceUrls, running_services, scratch_database


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceUrls]:
    with running_services() as urls:
        yield urls


@pytest.fixture(scope="session")
def database_url(services: ServiceUrls) -> Iterator[str]:
    with scratch_database(services.database_admin_url) as url:
        runner.upgrade(url)
        yield url


@pytest.fixture(scope="session")
def settings(services: ServiceUrls, database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = Settings(
        database_url=database_url,
        broker_url=services.broker_url,
        s3_endpoint_url=services.s3_endpoint_url,
        s3_access_key=services.s3_access_key,
        s3_secret_key=services.s3_secret_key,
        s3_bucket=f"maas-test-{secrets.token_hex(4)}",
        data_dir=tmp_path_factory.mktemp("data"),
        api_key_touch_interval_s=0,
        log_format="text",
        # the test-only job types, and the README's "Add a job type" example, next to the product's
        job_type_modules="tests.support.job_types,tests.support.dataset_stats",
        # fast clocks, so recovery paths run in seconds
        heartbeat_interval_s=0.2,
        heartbeat_timeout_s=3,
        reconcile_interval_s=0.5,
        redispatch_after_s=3,
        cancel_grace_s=1.5,
        webhook_timeout_s=2,
        webhook_backoff_base_s=0.2,
        webhook_backoff_max_s=2,
        webhook_progress_interval_s=0,
        webhook_allow_private_targets=True,  # the receivers are on loopback
        grpc_port=0,  # every app's gRPC endpoint on a free port: tests run several apps at once
    )
    ArtifactStore(settings).ensure_bucket()
    return settings


@pytest.fixture(scope="session")
def db(settings: Settings):
    engine = make_engine(settings)
    yield session_factory(engine)
    engine.dispose()


@dataclass
class Tenant:
    id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def new_tenant(db) -> Tenant:
    with db() as session:
        tenant = create_tenant(session, f"tenant-{secrets.token_hex(6)}")
        created = create_key(session, tenant, "test")
        session.commit()
    return Tenant(id=tenant.id, key=created.key, key_id=created.id)


@pytest.fixture
def tenant(db) -> Tenant:
    return new_tenant(db)


@pytest.fixture
def other_tenant(db) -> Tenant:
    return new_tenant(db)


@pytest.fixture
async def api(aiohttp_client, settings: Settings) -> AsyncIterator[TestClient]:
    """The API app, served on a real loopback port."""
    yield await aiohttp_client(create_app(settings))


@pytest.fixture(scope="session")
def job_worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The shared worker: runs the test job types' queue and the webhooks queue."""
    from core.broker import create_celery
    from job_types.registry import load_job_types

    app = create_celery(settings)
    with app.connection_for_write() as conn:  # messages of earlier runs must not reach this database
        for queue in load_job_types(settings).queues:
            with contextlib.suppress(Exception):
                conn.default_channel.queue_purge(queue)
    app.close()
    worker = Worker(settings, "test-shared,webhooks", tmp_path_factory.mktemp("worker") / "worker.log")
    yield worker
    worker.stop()


@pytest.fixture(scope="session")
def model_server(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelServerProcess]:
    """A model server in its own process (``python -m serving``): it loads every deployment of the session."""
    server = ModelServerProcess(settings, tmp_path_factory.mktemp("serving") / "serving.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def inference_worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A Celery worker consuming the inference queue: batch inference jobs, and asynchronous predictions
    (which it sends to the model servers: use it with ``model_server``)."""
    worker = Worker(settings, "inference", tmp_path_factory.mktemp("inference") / "worker.log", concurrency=1)
    yield worker
    worker.stop()
