"""The real services the tests run against.

Each one comes from the environment when its URL is set there, otherwise from the
embedded local stack (the same launchers ``maas up`` uses):

    MAAS_TEST_DATABASE_URL   a PostgreSQL server where the tests may CREATE DATABASE
    MAAS_TEST_BROKER_URL     a Redis broker (the default broker)
    MAAS_TEST_RABBITMQ_URL   optional: broker tests run on RabbitMQ too
    MAAS_TEST_S3_ENDPOINT_URL / MAAS_TEST_S3_ACCESS_KEY / MAAS_TEST_S3_SECRET_KEY
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy import create_engine, make_url, text

from core.db import sqlalchemy_url


class TestServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAAS_TEST_", extra="ignore")
    database_url: str | None = None
    broker_url: str | None = None
    rabbitmq_url: str | None = None
    s3_endpoint_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None


@dataclass
class ServiceUrls:
    database_admin_url: str
    broker_url: str
    rabbitmq_url: str | None
    s3_endpoint_url: str
    s3_access_key: str | None
    s3_secret_key: str | None


@contextlib.contextmanager
def running_services() -> Iterator[ServiceUrls]:
    """Yield service URLs, starting embedded servers for those not given in the environment.

    Their data lives outside pytest's temp tree: as root, a second pytest session resets that
    tree to mode 0700, which would lock the unprivileged postgres user out of a running server.
    """
    env = TestServiceSettings()
    with contextlib.ExitStack() as stack:
        work_dir = Path(tempfile.mkdtemp(prefix="maas-test-services-"))
        stack.callback(shutil.rmtree, work_dir, ignore_errors=True)
        database_url = env.database_url
        if not database_url:
            from infra.embedded.postgres import EmbeddedPostgres

            server = EmbeddedPostgres(work_dir / "postgres")
            database_url = server.start()
            stack.callback(server.stop)
        broker_url = env.broker_url
        if not broker_url:
            from infra.embedded.redis import EmbeddedRedis

            server = EmbeddedRedis(work_dir / "redis")
            broker_url = server.start()
            stack.callback(server.stop)
        s3_url, access, secret = env.s3_endpoint_url, env.s3_access_key, env.s3_secret_key
        if not s3_url:
            from infra.embedded.s3 import EmbeddedS3

            server = EmbeddedS3(work_dir / "s3")
            s3_url = server.start()
            access, secret = server.access_key, server.secret_key
            stack.callback(server.stop)
        yield ServiceUrls(database_url, broker_url, env.rabbitmq_url, s3_url, access, secret)


def _admin_engine(admin_url: str):
    return create_engine(sqlalchemy_url(admin_url), isolation_level="AUTOCOMMIT")


@contextlib.contextmanager
def scratch_database(admin_url: str, prefix: str = "maas_test") -> Iterator[str]:
    """A new, empty database on the server of ``admin_url``; dropped afterwards."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    engine = _admin_engine(admin_url)
    with engine.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(sqlalchemy_url(admin_url)).set(database=name).render_as_string(hide_password=False)
    finally:
        with engine.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        engine.dispose()
