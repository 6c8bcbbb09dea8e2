"""job events notify: a trigger sends NOTIFY maas_job_events '<job id>' for each inserted event

The API's one LISTEN connection per process wakes the single reader of that job, which fans the new
rows out to every Server-Sent Events stream watching it (api/event_fanout.py). The notification
carries only the job id: readers always read the rows after their cursor, so a lost notification
delays an event and never loses it.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 22:20:00.000000
"""

from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION maas_notify_job_event() RETURNS trigger AS $$
        BEGIN
            PERFORM pg_notify('maas_job_events', NEW.job_id);
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql
        """
    )
    op.execute(
        """
        CREATE TRIGGER job_events_notify AFTER INSERT ON job_events
        FOR EACH ROW EXECUTE FUNCTION maas_notify_job_event()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER job_events_notify ON job_events")
    op.execute("DROP FUNCTION maas_notify_job_event()")
