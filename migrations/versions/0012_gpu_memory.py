"""gpu memory: a model server's GPU budget as a second placement dimension

- ``model_servers``: the GPU memory placement may fill (0: no GPU, placement counts its main
  memory only) and what its replicas hold there (bytes), as ``memory_budget_bytes`` /
  ``memory_used_bytes``.
- ``model_replicas.gpu_memory_bytes``: the GPU memory a replica holds (measured once loaded, an
  estimate before; 0 on a server without a GPU).
- ``model_versions.gpu_memory_bytes``: what the version took on a GPU when it was last loaded on
  one, for placement (null: never).

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 04:30:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "model_servers", sa.Column("gpu_memory_budget_bytes", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column(
        "model_servers", sa.Column("gpu_memory_used_bytes", sa.BigInteger(), server_default="0", nullable=False)
    )
    op.add_column("model_replicas", sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True))
    op.add_column("model_versions", sa.Column("gpu_memory_bytes", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("model_versions", "gpu_memory_bytes")
    op.drop_column("model_replicas", "gpu_memory_bytes")
    op.drop_column("model_servers", "gpu_memory_used_bytes")
    op.drop_column("model_servers", "gpu_memory_budget_bytes")
