"""Asynchronous predictions in Postgres: creation, and status changes with their webhooks.

A prediction follows the job state machine (``core.job_states``; the database trigger guards it
too): created ``queued`` with its inputs, claimed ``running`` by an inference worker, then
``succeeded`` with its outputs, ``failed`` or ``canceled`` (only while still queued). Runs on a
synchronous session: workers call it directly, the API through ``run_sync``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from core import webhooks
from core.dispatch import later
from core.ids import new_id
from core.job_states import QUEUED, TERMINAL
from core.models import Prediction
from core.objects import PredictionObject
from core.status_update import guarded_update

RUN_TASK = "workers.predictions.run"


def create_prediction(
    session: Session,
    *,
    tenant_id: str,
    model_version_id: str,
    inputs: dict[str, Any],
    webhook: str | None,
    webhook_events_filter: list[str],
) -> Prediction:
    prediction = Prediction(
        id=new_id("prediction"),
        tenant_id=tenant_id,
        model_version_id=model_version_id,
        status=QUEUED,
        is_async=True,
        input=inputs,
        webhook=webhook,
        webhook_events_filter=webhook_events_filter,
    )
    session.add(prediction)
    session.flush()
    dispatch(session, prediction)
    session.refresh(prediction)
    return prediction


def dispatch(session: Session, prediction: Prediction) -> None:
    """Ask an inference worker to run it, after commit."""
    prediction.dispatched_at = datetime.now(UTC)
    later(session, RUN_TASK, prediction.id, queue="inference")


def transition(
    session: Session,
    prediction_id: str,
    target: str,
    *,
    view: Callable[[Prediction], PredictionObject],
    values: dict[str, Any] | None = None,
) -> Prediction | None:
    """Move a prediction to ``target`` when the state machine allows it; None when refused.

    ``view(prediction)`` is its object for the webhook body (``PredictionObject.from_row`` needs the model's
    name and version, which the caller knows).
    """
    values = dict(values or {})
    if target in TERMINAL:
        values.setdefault("completed_at", datetime.now(UTC))
    prediction = guarded_update(session, Prediction, prediction_id, target, values)
    if prediction is None:
        return None
    event = webhooks.EVENT_FOR_STATUS.get(target)
    if event and prediction.webhook and webhooks.wants(event, prediction.webhook, prediction.webhook_events_filter):
        webhooks.enqueue(
            session,
            prediction.tenant_id,
            prediction.id,
            event,
            prediction.webhook,
            {**view(prediction).model_dump(mode="json"), "event": event},
        )
    return prediction
