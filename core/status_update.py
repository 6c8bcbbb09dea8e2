"""The one guarded status change shared by jobs and predictions, and how their times are written.

``UPDATE … SET status = target WHERE id = … AND status IN (the statuses ``target`` may follow)``:
the state machine of ``core.job_states`` applied in SQL, so of two racing writers exactly one wins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, update
from sqlalchemy.orm import Session

from core.job_states import sources
from core.models import Job, Prediction

T = TypeVar("T", Job, Prediction)


def guarded_update(
    session: Session, entity: type[T], row_id: str, target: str, values: dict[str, Any], *conditions: ColumnElement
) -> T | None:
    """The row moved to ``target`` (refreshed), or None when its status (or ``conditions``) refused it."""
    row = session.scalar(
        update(entity)
        .where(entity.id == row_id, entity.status.in_(sources(target)), *conditions)
        .values(status=target, **values)
        .returning(entity)
        .execution_options(synchronize_session=False)
    )
    if row is not None:
        session.refresh(row)
    return row


def rfc3339(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None
