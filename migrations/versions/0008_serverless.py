"""serverless: reserved for serverless serving (issue #10); no schema change yet

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 01:05:00.000000
"""

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
