"""fair scheduling: reserved for fair job scheduling (issue #15); no schema change yet

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 01:05:00.000000
"""

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
