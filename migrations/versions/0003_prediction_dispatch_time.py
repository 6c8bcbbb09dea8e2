"""prediction dispatch time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 00:36:56.778112
"""

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('predictions', sa.Column('dispatched_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column('predictions', 'dispatched_at')
