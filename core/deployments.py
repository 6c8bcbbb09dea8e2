"""Deployments and the replicas that serve them: the rules the API and the model servers share.

A model has at most one deployment: the version to serve, its batching settings (Triton's
meanings) and its scaling settings (:class:`ScalingSettings`, Knative's and Ray Serve's meanings).
One placer among the model servers (``serving.placer``) assigns its replicas to servers; each
server (``serving/``, ``maas serve``) loads what is assigned to it and reports every version it
holds as a ``model_replicas`` row; a server whose heartbeat is older than
``model_server_timeout_s`` is dead and its replicas count for nothing. The session functions run
on a synchronous Session (the API calls them through ``run_sync``); the rest is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.ids import new_id
from core.models import Deployment, ModelReplica, ModelServerRecord, ModelVersion
from core.serving_signals import DEMAND_CHANNEL, notify
from core.settings import Settings

PENDING, READY, FAILED = "pending", "ready", "failed"


@dataclass(frozen=True)
class BatchingSettings:
    """How a deployment's requests are batched: Triton's dynamic batcher settings."""

    max_batch_size: int
    max_queue_delay_us: int
    max_queue_size: int
    timeout_ms: int

    @classmethod
    def of(cls, deployment: Deployment) -> BatchingSettings:
        return cls(
            max_batch_size=deployment.max_batch_size,
            max_queue_delay_us=deployment.max_queue_delay_us,
            max_queue_size=deployment.max_queue_size,
            timeout_ms=deployment.timeout_ms,
        )


@dataclass(frozen=True)
class ScalingSettings:
    """How many replicas a deployment has, and when that changes (``serving.placement`` decides)."""

    min_replicas: int  # never fewer (0: scale to zero); a replica of a deployment with 1+ is never evicted
    max_replicas: int  # never more (the autoscaler's ceiling; at most one replica per model server)
    target_concurrency: int  # in-flight requests per replica the autoscaler aims at
    idle_timeout_s: int  # no request for this long: a replica above min_replicas unloads
    cold_start_timeout_ms: int  # how long the API holds a request while a replica loads, then 503

    @classmethod
    def of(cls, deployment: Deployment) -> ScalingSettings:
        return cls(
            min_replicas=deployment.min_replicas,
            max_replicas=deployment.max_replicas,
            target_concurrency=deployment.target_concurrency,
            idle_timeout_s=deployment.idle_timeout_s,
            cold_start_timeout_ms=deployment.cold_start_timeout_ms,
        )


def batching_problems(signature: Mapping[str, Any], max_batch_size: int) -> list[str]:
    """Why a version cannot be served with ``max_batch_size`` (requests are merged along axis 0)."""
    problems = []
    for spec in signature.get("inputs", []):
        shape = spec.get("shape")
        if shape is None:
            continue  # the graph does not state the rank; the batcher checks each request
        if not shape:
            problems.append(f"input '{spec['name']}' is a scalar; serving needs a leading batch dimension")
        elif shape[0] != -1 and not (shape[0] == 1 and max_batch_size == 1):
            problems.append(
                f"input '{spec['name']}' has a fixed first dimension of {shape[0]}; serving merges requests "
                "along the first dimension, so it must be free (or 1, with max_batch_size 1)"
            )
    return problems


def deployment_status(replica_statuses: Iterable[str], placement_error: str | None = None) -> str:
    """``ready`` once a live server serves the deployed version, ``failed`` when every one that tried failed
    or when no server can take it (``placement_error``); otherwise ``pending`` (also while scaled to zero)."""
    statuses = list(replica_statuses)
    if placement_error is not None and READY not in statuses:
        return FAILED
    if READY in statuses:
        return READY
    if statuses and all(status == FAILED for status in statuses):
        return FAILED
    return PENDING


def load_failure(replicas: Iterable[tuple[str, str | None]], placement_error: str | None = None) -> str | None:
    """Why the deployed version cannot be served (``deployment_status`` says ``failed``), from its replicas'
    (status, error) on live servers and its ``placement_error``; None while it is ready or may still load."""
    states = list(replicas)
    if deployment_status((status for status, _ in states), placement_error) != FAILED:
        return None
    errors = (error for status, error in states if status == FAILED and error)
    return placement_error or next(errors, "every load of it failed")


def live_since(settings: Settings) -> ColumnElement[datetime]:
    """Servers with a heartbeat after this moment are alive (the database's clock, so hosts may disagree)."""
    return func.now() - timedelta(seconds=settings.model_server_timeout_s)


def upsert_deployment(
    session: Session, model_id: str, version: ModelVersion, batching: BatchingSettings, scaling: ScalingSettings
) -> Deployment:
    """Create or replace the model's deployment, in the caller's transaction, and wake the placer.

    A PUT counts as a request (``demand_at``): the deployment starts one replica at once, as
    Knative's initial scale of 1 does, and goes back to ``min_replicas`` once idle.
    """
    values = {
        "model_version_id": version.id,
        **asdict(batching),
        **asdict(scaling),
        "demand_at": func.now(),
        "placement_error": None,
        "updated_at": func.now(),
    }
    session.execute(
        insert(Deployment)
        .values(id=new_id("deployment"), model_id=model_id, **values)
        .on_conflict_do_update(index_elements=[Deployment.model_id], set_=values)
    )
    notify(session, DEMAND_CHANNEL, model_id)
    return session.scalars(
        select(Deployment).where(Deployment.model_id == model_id).execution_options(populate_existing=True)
    ).one()


def delete_deployment(session: Session, model_id: str) -> bool:
    """Undeploy; the model servers drain and unload the version on their next poll."""
    # a DELETE's result is a CursorResult; Session.execute is typed as returning a plain Result
    result = cast(CursorResult[Any], session.execute(delete(Deployment).where(Deployment.model_id == model_id)))
    return bool(result.rowcount)


def live_replicas(session: Session, settings: Settings, version_ids: Iterable[str]) -> list[ModelReplica]:
    """The replica rows of ``version_ids`` held by live servers, oldest first."""
    return list(
        session.scalars(
            select(ModelReplica)
            .join(ModelServerRecord, ModelServerRecord.id == ModelReplica.server_id)
            .where(
                ModelReplica.model_version_id.in_(list(version_ids)),
                ModelServerRecord.heartbeat_at > live_since(settings),
            )
            .order_by(ModelReplica.created_at)
        )
    )
