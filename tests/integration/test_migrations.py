"""Alembic migrations on a real PostgreSQL: head, base and head again, and agreement with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

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


def test_deployments_that_existed_before_serverless_stay_loaded_and_new_ones_scale_to_zero(services):
    with scratch_database(services.database_admin_url, "maas_migrate") as url:
        runner.upgrade(url, "0007")
        engine = create_engine(sqlalchemy_url(url))
        rows = """
            INSERT INTO tenants (id, name) VALUES ('ten_1', 't');
            INSERT INTO models (id, tenant_id, name) VALUES ('mdl_1', 'ten_1', 'm'), ('mdl_2', 'ten_1', 'n');
            INSERT INTO artifacts (id, tenant_id, kind, name, bytes, sha256, storage_key, content_type)
                VALUES ('art_1', 'ten_1', 'model', 'm.onnx', 1, 'x', 'k', 'application/octet-stream');
            INSERT INTO model_versions (id, model_id, version, artifact_id, sha256, signature, metrics, lineage)
                VALUES ('mv_1', 'mdl_1', 1, 'art_1', 'x', '{}', '{}', '{}'),
                       ('mv_2', 'mdl_2', 1, 'art_1', 'x', '{}', '{}', '{}');
        """
        deployment = """
            INSERT INTO deployments (id, model_id, model_version_id, max_batch_size, max_queue_delay_us,
                max_queue_size, timeout_ms) VALUES (:id, :model, :version, 8, 500, 64, 1000)
        """
        try:
            with engine.begin() as conn:
                for statement in rows.split(";"):
                    if statement.strip():
                        conn.execute(text(statement))
                conn.execute(text(deployment), {"id": "dep_1", "model": "mdl_1", "version": "mv_1"})
            runner.upgrade(url)
            with engine.begin() as conn:
                conn.execute(text(deployment), {"id": "dep_2", "model": "mdl_2", "version": "mv_2"})
                got = dict(conn.execute(text("SELECT id, min_replicas FROM deployments")).all())
        finally:
            engine.dispose()
        assert got == {"dep_1": 1, "dep_2": 0}
