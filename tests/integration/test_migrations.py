"""Alembic migrations on a real PostgreSQL: head, base and head again, and agreement with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.db import sqlalchemy_url
from core.models import Base
from migrations import runner
from tests.support.services import scratch_database

TABLES = {
    "tenants",
    "api_keys",
    "files",
    "jobs",
    "job_events",
    "artifacts",
    "models",
    "model_versions",
    "deployments",
    "predictions",
    "webhook_deliveries",
    "webhook_secrets",
    "idempotency_keys",
    "model_servers",
    "model_replicas",
    "tenant_quotas",
    "usage_hourly",
    "rate_buckets",
    "serving_events",
    "job_workers",
}


def tables(url: str) -> set[str]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(services):
    with scratch_database(services.database_admin_url, "maas_migrate") as url:
        runner.upgrade(url)
        assert tables(url) == TABLES
        assert runner.current(url) is not None

        runner.downgrade(url)
        assert tables(url) == set()
        assert runner.current(url) is None

        runner.upgrade(url)
        assert tables(url) == TABLES


def test_migrations_match_the_models(database_url):
    engine = create_engine(sqlalchemy_url(database_url))
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_the_status_guard_in_the_migration_is_the_state_machine():
    from importlib import import_module

    from core.job_states import trigger_sql

    initial = import_module("migrations.versions.0001_initial_schema")
    assert initial.GUARD_STATUS.strip() == trigger_sql().strip()
