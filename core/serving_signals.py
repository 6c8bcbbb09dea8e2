"""The PostgreSQL notifications that make serverless serving react in milliseconds, not at the next poll.

Three channels, each a ``pg_notify`` sent inside the transaction that made the change (so a
listener that reads after the notice sees it):

- :data:`DEMAND_CHANNEL` (payload: a model id), API → placer: a request waits for that model's
  deployment, which has no ready replica. :func:`signal_demand` also stamps ``deployments.demand_at``,
  so a placer that missed the notice still sees the demand at its next pass.
- :data:`REPLICAS_CHANNEL` (payload: a model version id), model server → APIs: one of that version's
  replicas changed state (assigned, loading, ready, draining, unloaded, failed); re-read the routing.
- :data:`ASSIGNMENTS_CHANNEL` (payload: a model server id), placer → model server: a replica was
  assigned to that server, or one of its replicas is to be evicted; act now.

The functions run on a synchronous Session (the API calls them through ``run_sync``); the caller commits.
"""

from __future__ import annotations

from sqlalchemy import Executable, func, or_, text, update
from sqlalchemy.orm import Session

from core.models import Deployment

DEMAND_CHANNEL = "maas_serving_demand"
REPLICAS_CHANNEL = "maas_replicas"
ASSIGNMENTS_CHANNEL = "maas_replica_assignments"

_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def notification(channel: str, payload: str) -> Executable:
    """A ``pg_notify`` statement, for a sync or an async session: delivered when (and if) its transaction commits."""
    return _NOTIFY.bindparams(channel=channel, payload=payload)


def notify(session: Session, channel: str, payload: str) -> None:
    session.execute(notification(channel, payload))


def signal_demand(session: Session, model_id: str, *, refresh_after_s: float = 1.0) -> None:
    """Say that a request waits for ``model_id``'s deployment: stamp ``demand_at`` and wake the placer.

    ``demand_at`` is set when it is unset or older than ``refresh_after_s`` (so a long wait keeps
    it fresh without a write per request); the notice is sent every time, it costs nothing.
    """
    stale = func.now() - func.make_interval(0, 0, 0, 0, 0, 0, refresh_after_s)
    session.execute(
        update(Deployment)
        .where(Deployment.model_id == model_id, or_(Deployment.demand_at.is_(None), Deployment.demand_at < stale))
        .values(demand_at=func.now())
    )
    notify(session, DEMAND_CHANNEL, model_id)


def notify_replicas_changed(session: Session, version_id: str) -> None:
    """Tell the APIs that a replica of ``version_id`` changed state (they re-read their routing)."""
    notify(session, REPLICAS_CHANNEL, version_id)


def notify_assigned(session: Session, server_id: str) -> None:
    """Tell model server ``server_id`` that the placer assigned or evicted one of its replicas."""
    notify(session, ASSIGNMENTS_CHANNEL, server_id)
