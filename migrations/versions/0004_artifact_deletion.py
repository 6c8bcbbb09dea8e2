"""artifact deletion: when and why an artifact's content was removed from the store

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 20:50:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('artifacts', sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('artifacts', sa.Column('deleted_reason', sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column('artifacts', 'deleted_reason')
    op.drop_column('artifacts', 'deleted_at')
