"""prediction transport: how a synchronous request arrived, http (/v2) or grpc

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 22:05:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('predictions', sa.Column('transport', sa.String(length=8), nullable=True))
    # every synchronous request recorded so far came over HTTP
    op.execute("UPDATE predictions SET transport = 'http' WHERE NOT is_async")


def downgrade() -> None:
    op.drop_column('predictions', 'transport')
