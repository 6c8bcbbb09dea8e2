"""The state machine of jobs and predictions, as data: which status may follow which.

    queued ──▶ running ──▶ succeeded | failed | canceled
      │  ▲        │
      │  └────────┘   (re-queued when its worker was lost and attempts remain)
      └──▶ canceled | failed

Terminal states never change. ``core.jobs.transition`` applies this table in SQL
(``UPDATE … WHERE status IN (allowed sources)``) and a trigger in the database
refuses any other change, so a cancel racing a success ends in exactly one state.
"""

from __future__ import annotations

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = "queued", "running", "succeeded", "failed", "canceled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELED})

NEXT: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELED, FAILED}),
    RUNNING: frozenset({QUEUED, SUCCEEDED, FAILED, CANCELED}),
    SUCCEEDED: frozenset(),
    FAILED: frozenset(),
    CANCELED: frozenset(),
}


class InvalidTransition(RuntimeError):
    """A status change the state machine does not allow (or another writer got there first)."""


def can_transition(current: str, target: str) -> bool:
    return target in NEXT[current]


def sources(target: str) -> tuple[str, ...]:
    """Every status from which ``target`` may be reached."""
    return tuple(status for status in STATUSES if target in NEXT[status])


def is_terminal(status: str) -> bool:
    return status in TERMINAL


def trigger_sql() -> str:
    """PL/pgSQL that enforces NEXT on every UPDATE of a table with a ``status`` column."""
    allowed = " OR ".join(
        f"(OLD.status = '{src}' AND NEW.status IN ({', '.join(repr(t) for t in sorted(targets))}))"
        for src, targets in NEXT.items()
        if targets
    )
    return f"""
CREATE OR REPLACE FUNCTION maas_guard_status() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status AND NOT ({allowed}) THEN
        RAISE EXCEPTION 'status % may not change to %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
"""
