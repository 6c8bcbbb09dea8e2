"""fair scheduling: job priority, tenant weights, the job workers' registry and the dispatch wake-up

- ``jobs.priority``: a tenant's own order among its queued jobs (higher first);
- ``tenants.fair_share_weight``: a tenant's share of each queue against the others (default 1);
- an index on ``jobs.finished_at``: each dispatch pass reads the jobs that ended recently;
- ``job_workers``: each worker's queues and concurrency, with a heartbeat: what the dispatcher
  (``workers.dispatcher``) counts as the slots of a queue;
- a statement trigger on ``jobs`` sends ``NOTIFY maas_job_dispatch`` when a job is created or
  changes status, so the dispatcher fills a freed slot at once instead of at its next poll.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 01:05:00.000000
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
    op.add_column("tenants", sa.Column("fair_share_weight", sa.Integer(), server_default="1", nullable=False))
    # each dispatch pass reads the jobs that ended within a few half-lives
    op.create_index(op.f("ix_jobs_finished_at"), "jobs", ["finished_at"])
    op.create_table(
        "job_workers",
        sa.Column("id", sa.String(length=200), nullable=False),
        sa.Column("broker", sa.String(length=64), nullable=False),
        sa.Column("queues", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("concurrency", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_workers")),
    )
    op.execute(
        """
        CREATE FUNCTION maas_notify_job_dispatch() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('maas_job_dispatch', '');
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    # per statement, and one payload: a transaction's many changes wake the dispatcher once
    op.execute(
        """
        CREATE TRIGGER jobs_notify_dispatch AFTER INSERT OR UPDATE OF status ON jobs
        FOR EACH STATEMENT EXECUTE FUNCTION maas_notify_job_dispatch()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER jobs_notify_dispatch ON jobs")
    op.execute("DROP FUNCTION maas_notify_job_dispatch()")
    op.drop_table("job_workers")
    op.drop_index(op.f("ix_jobs_finished_at"), table_name="jobs")
    op.drop_column("tenants", "fair_share_weight")
    op.drop_column("jobs", "priority")
