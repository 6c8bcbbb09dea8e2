"""A tenant's deployments' recent traffic, read from the recorded ``predictions`` rows.

Every synchronous inference request (REST or gRPC) leaves a row (``api.prediction_recorder``):
its status, when it started and ended, and the batch its model call merged it into. For each
deployment of the tenant, :func:`deployment_stats` counts the rows of the last ``window`` for
any version of the deployed model: requests per minute, the share that failed, the p50/p99 of
the latency as the API measured it (request in to answer out) and the batch sizes of the
succeeded ones (a batch's size is the rows of its model call). Asynchronous predictions are
not counted (their latency is the worker queue's). Rows still in an API process's buffer
(``prediction_flush_s``) are not counted yet.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Float, and_, cast, extract, func, select
from sqlalchemy.orm import Session

from core.ids import first_id_at
from core.models import Deployment, Model, ModelVersion, Prediction


@dataclass(frozen=True)
class DeploymentStats:
    """One deployment's traffic over the window; the latency and batch figures are None without
    a succeeded request."""

    model: str
    version: int
    requests: int
    errors: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    mean_batch_size: float | None
    max_batch_size: int | None

    def per_minute(self, window: timedelta) -> float:
        return self.requests / (window.total_seconds() / 60)

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def deployment_stats(session: Session, tenant_id: str, now: datetime, window: timedelta) -> list[DeploymentStats]:
    """Every deployment of ``tenant_id`` by model name, with its requests since ``now - window``."""
    since = now - window
    ok = Prediction.status == "succeeded"
    latency_ms = cast(extract("epoch", Prediction.completed_at - Prediction.created_at) * 1000.0, Float)
    traffic = (
        select(
            ModelVersion.model_id.label("model_id"),
            func.count().label("requests"),
            func.count().filter(Prediction.status == "failed").label("errors"),
            func.percentile_cont(0.5).within_group(latency_ms).filter(ok).label("p50"),
            func.percentile_cont(0.99).within_group(latency_ms).filter(ok).label("p99"),
            func.avg(Prediction.batch_size).filter(ok).label("mean_batch"),
            func.max(Prediction.batch_size).filter(ok).label("max_batch"),
        )
        .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
        .where(
            Prediction.tenant_id == tenant_id,
            # the id range lets the (tenant_id, id) index find the window; created_at is exact
            Prediction.id >= first_id_at("prediction", int(since.timestamp() * 1000)),
            Prediction.created_at >= since,
            Prediction.is_async.is_(False),
        )
        .group_by(ModelVersion.model_id)
        .subquery()
    )
    deployed = ModelVersion.__table__.alias("deployed")
    rows = session.execute(
        select(Model.name, deployed.c.version, traffic)
        .join(Deployment, Deployment.model_id == Model.id)
        .join(deployed, deployed.c.id == Deployment.model_version_id)
        .outerjoin(traffic, and_(traffic.c.model_id == Model.id))
        .where(Model.tenant_id == tenant_id)
        .order_by(Model.name)
    ).all()
    return [
        DeploymentStats(
            model=row.name,
            version=row.version,
            requests=row.requests or 0,
            errors=row.errors or 0,
            latency_p50_ms=_rounded(row.p50),
            latency_p99_ms=_rounded(row.p99),
            mean_batch_size=_rounded(row.mean_batch),
            max_batch_size=row.max_batch,
        )
        for row in rows
    ]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 3)
