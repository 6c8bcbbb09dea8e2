"""text models: reserved for fine-tuning and text models (issue #16); no schema change yet

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 01:05:00.000000
"""

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
