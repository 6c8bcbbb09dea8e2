"""tenant limits: per-tenant quota overrides, hourly usage aggregates, shared rate-limit buckets (issue #15)

``tenant_quotas`` holds a tenant's own value of a quota (core/quotas.py); ``usage_hourly`` the
usage every process adds to in bulk (core/usage.py); ``rate_buckets`` the token buckets every API
process leases tokens from (core/rate_buckets.py).

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 01:05:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_quotas",
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_tenant_quotas_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("tenant_id", "name", name=op.f("pk_tenant_quotas")),
    )
    op.create_table(
        "usage_hourly",
        sa.Column("hour", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=40), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("transport", sa.String(length=8), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_hourly_tenant_id_tenants"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("hour", "tenant_id", "metric", "subject", "transport", name=op.f("pk_usage_hourly")),
    )
    op.create_index(op.f("ix_usage_hourly_tenant_id_hour"), "usage_hourly", ["tenant_id", "hour"])
    op.create_table(
        "rate_buckets",
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("granted", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_buckets")),
    )


def downgrade() -> None:
    op.drop_table("rate_buckets")
    op.drop_index(op.f("ix_usage_hourly_tenant_id_hour"), table_name="usage_hourly")
    op.drop_table("usage_hourly")
    op.drop_table("tenant_quotas")
