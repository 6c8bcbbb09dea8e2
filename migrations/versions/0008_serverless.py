"""serverless: per-deployment scaling settings, placed replicas within memory budgets, serving events

- ``deployments``: ``min_replicas`` (0 = scale to zero), ``max_replicas``, ``target_concurrency``
  (in-flight requests per replica the autoscaler aims at), ``idle_timeout_s`` (no traffic for that
  long: a replica above ``min_replicas`` unloads), ``cold_start_timeout_ms`` (how long the API holds
  a request while a replica loads), ``demand_at`` (set by the API when it holds a request and no
  replica is ready; the placer clears it once one is), ``placement_error`` (why no replica can be
  placed, e.g. the model is bigger than every budget). Deployments that exist when this runs get
  ``min_replicas`` 1: they were always loaded, and stay so until their owner says otherwise; new
  ones default to 0.
- ``model_servers``: the server's memory budget and what its replicas hold (bytes).
- ``model_replicas``: a new status ``assigned`` (the placer chose this server; it has not started
  loading), the replica's memory, when a request last reached it, requests in flight, and
  ``evict_reason`` (the placer wants it gone: the server drains it, then deletes the row).
- ``model_versions.memory_bytes``: what the version took when it was last loaded, for placement.
- ``serving_events``: one row per placement, load, unload and scale decision, with its reason.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 01:05:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD_STATUSES = "status IN ('loading', 'ready', 'draining', 'failed')"
NEW_STATUSES = "status IN ('assigned', 'loading', 'ready', 'draining', 'failed')"
ACTIONS = "action IN ('assign', 'loaded', 'load_failed', 'evict', 'unloaded', 'scale_up', 'scale_down', 'failed')"


def upgrade() -> None:
    # existing deployments were always loaded: they keep one replica (server default 1), new ones start at 0
    op.add_column("deployments", sa.Column("min_replicas", sa.Integer(), server_default="1", nullable=False))
    op.alter_column("deployments", "min_replicas", server_default="0")
    op.add_column("deployments", sa.Column("max_replicas", sa.Integer(), server_default="1", nullable=False))
    op.add_column("deployments", sa.Column("target_concurrency", sa.Integer(), server_default="16", nullable=False))
    op.add_column("deployments", sa.Column("idle_timeout_s", sa.Integer(), server_default="300", nullable=False))
    op.add_column(
        "deployments", sa.Column("cold_start_timeout_ms", sa.Integer(), server_default="30000", nullable=False)
    )
    op.add_column("deployments", sa.Column("demand_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("deployments", sa.Column("placement_error", sa.Text(), nullable=True))
    op.create_check_constraint(
        op.f("ck_deployments_scaling"),
        "deployments",
        "min_replicas >= 0 AND max_replicas >= 1 AND max_replicas >= min_replicas AND target_concurrency >= 1 "
        "AND idle_timeout_s >= 1 AND cold_start_timeout_ms >= 0",
    )

    op.add_column(
        "model_servers", sa.Column("memory_budget_bytes", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column("model_servers", sa.Column("memory_used_bytes", sa.BigInteger(), server_default="0", nullable=False))

    op.drop_constraint(op.f("ck_model_replicas_status"), "model_replicas", type_="check")
    op.create_check_constraint(op.f("ck_model_replicas_status"), "model_replicas", NEW_STATUSES)
    op.add_column("model_replicas", sa.Column("memory_bytes", sa.BigInteger(), nullable=True))
    op.add_column("model_replicas", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("model_replicas", sa.Column("in_flight", sa.Integer(), server_default="0", nullable=False))
    op.add_column("model_replicas", sa.Column("evict_reason", sa.Text(), nullable=True))
    op.create_index(op.f("ix_model_replicas_server_id"), "model_replicas", ["server_id"])

    op.add_column("model_versions", sa.Column("memory_bytes", sa.BigInteger(), nullable=True))

    op.create_table(
        "serving_events",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("model_id", sa.String(length=40), nullable=False),
        sa.Column("model_version_id", sa.String(length=40), nullable=True),
        sa.Column("server_id", sa.String(length=40), nullable=True),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.CheckConstraint(ACTIONS, name=op.f("ck_serving_events_action")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_serving_events_model_id_models"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_serving_events")),
    )
    op.create_index(op.f("ix_serving_events_model_id_id"), "serving_events", ["model_id", "id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_serving_events_model_id_id"), table_name="serving_events")
    op.drop_table("serving_events")
    op.drop_column("model_versions", "memory_bytes")
    op.drop_index(op.f("ix_model_replicas_server_id"), table_name="model_replicas")
    for column in ("evict_reason", "in_flight", "last_used_at", "memory_bytes"):
        op.drop_column("model_replicas", column)
    op.execute("DELETE FROM model_replicas WHERE status = 'assigned'")
    op.drop_constraint(op.f("ck_model_replicas_status"), "model_replicas", type_="check")
    op.create_check_constraint(op.f("ck_model_replicas_status"), "model_replicas", OLD_STATUSES)
    op.drop_column("model_servers", "memory_used_bytes")
    op.drop_column("model_servers", "memory_budget_bytes")
    op.drop_constraint(op.f("ck_deployments_scaling"), "deployments", type_="check")
    for column in (
        "placement_error",
        "demand_at",
        "cold_start_timeout_ms",
        "idle_timeout_s",
        "target_concurrency",
        "max_replicas",
        "min_replicas",
    ):
        op.drop_column("deployments", column)
