"""model last_version: the highest version number a model ever had, so a deleted number is never reused

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 21:00:00.000000
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('models', sa.Column('last_version', sa.Integer(), server_default='0', nullable=False))
    op.execute(
        'UPDATE models SET last_version = coalesce('
        '(SELECT max(version) FROM model_versions WHERE model_versions.model_id = models.id), 0)'
    )


def downgrade() -> None:
    op.drop_column('models', 'last_version')
