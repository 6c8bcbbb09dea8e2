"""tenant limits: reserved for tenant quotas, rate limits and usage metering (issue #15); no schema change yet

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 01:05:00.000000
"""

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
