"""serving: model servers and their replicas; the batch each prediction ran in

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 00:05:09.752073
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('model_servers',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('url', sa.Text(), nullable=False),
    sa.Column('hostname', sa.String(length=255), nullable=False),
    sa.Column('pid', sa.Integer(), nullable=False),
    sa.Column('threads', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_model_servers'))
    )
    op.create_table('model_replicas',
    sa.Column('server_id', sa.String(length=40), nullable=False),
    sa.Column('model_version_id', sa.String(length=40), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint("status IN ('loading', 'ready', 'draining', 'failed')", name=op.f('ck_model_replicas_status')),
    sa.ForeignKeyConstraint(['model_version_id'], ['model_versions.id'], name=op.f('fk_model_replicas_model_version_id_model_versions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['server_id'], ['model_servers.id'], name=op.f('fk_model_replicas_server_id_model_servers'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('server_id', 'model_version_id', name=op.f('pk_model_replicas'))
    )
    op.create_index(op.f('ix_model_replicas_model_version_id'), 'model_replicas', ['model_version_id'], unique=False)
    op.add_column('predictions', sa.Column('batch_id', sa.String(length=64), nullable=True))
    op.add_column('predictions', sa.Column('batch_size', sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column('predictions', 'batch_size')
    op.drop_column('predictions', 'batch_id')
    op.drop_index(op.f('ix_model_replicas_model_version_id'), table_name='model_replicas')
    op.drop_table('model_replicas')
    op.drop_table('model_servers')
