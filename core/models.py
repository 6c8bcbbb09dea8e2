"""The PostgreSQL schema as SQLAlchemy 2 models: the one description of our tables.

The database only ever changes through Alembic migrations in ``migrations/``; a
test checks that the migrations and these models agree.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from core.job_states import STATUSES

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

FILE_PURPOSES = ("dataset", "model")
# assigned (by the placer) → loading → ready → draining (then the row goes); failed when the load did not work
REPLICA_STATUSES = ("assigned", "loading", "ready", "draining", "failed")
# what ``serving_events`` record (``serving.placer``, ``serving.control_loop``)
SERVING_ACTIONS = ("assign", "loaded", "load_failed", "evict", "unloaded", "scale_up", "scale_down", "failed")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _now() -> Any:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB}


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # its share of each job queue against the other tenants' (``core.fair_share``)
    fair_share_weight: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    created_at: Mapped[datetime] = _now()


class ApiKey(Base):
    """An API key: only its sha256 is stored; ``prefix`` is the visible part (``maas_ab12cd34``)."""

    __tablename__ = "api_keys"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(40), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = _now()
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class File(Base):
    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint(_in("purpose", FILE_PURPOSES), name="purpose"),
        Index(None, "tenant_id", "id"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    filename: Mapped[str] = mapped_column(String(255))
    purpose: Mapped[str] = mapped_column(String(20))
    format: Mapped[str] = mapped_column(String(20))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _now()


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="status"),
        Index(None, "tenant_id", "id"),
        Index(None, "status"),
        Index(None, "finished_at"),  # the dispatcher's recent-usage read (workers.dispatcher)
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    type: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]]
    progress: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    # the tenant's own order among its queued jobs, higher first (``core.fair_share``)
    priority: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    worker_id: Mapped[str | None] = mapped_column(String(200))
    # set when the dispatcher sent the job to its queue; null while it waits for a free slot
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    webhook: Mapped[str | None] = mapped_column(Text)
    webhook_events_filter: Mapped[list[Any]] = mapped_column(default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    created_at: Mapped[datetime] = _now()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class JobWorker(Base):
    """A running worker (``maas worker``): the job queues it consumes and how many jobs it runs at once.

    Its main process refreshes ``heartbeat_at``; the dispatcher (``workers.dispatcher``) counts the
    slots of live workers only. ``broker`` is a digest of the worker's broker URL: a dispatcher sends
    only to workers that listen on its own broker.
    """

    __tablename__ = "job_workers"
    id: Mapped[str] = mapped_column(String(200), primary_key=True)  # the Celery node name
    broker: Mapped[str] = mapped_column(String(64))
    queues: Mapped[list[Any]]
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()


class JobEvent(Base):
    """One thing that happened to a job; ``seq`` orders a job's events (ids may tie in one millisecond)."""

    __tablename__ = "job_events"
    __table_args__ = (Index(None, "job_id", "seq"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, Identity(always=True), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = _now()
    level: Mapped[str] = mapped_column(String(10), default="info")
    type: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (Index(None, "tenant_id", "id"), Index(None, "job_id"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    kind: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    storage_key: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str] = mapped_column(String(100), default="application/octet-stream")
    created_at: Mapped[datetime] = _now()
    # set when the object was removed from the store (checkpoint retention); the row stays as a record
    deleted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    deleted_reason: Mapped[str | None] = mapped_column(Text)


class Model(Base):
    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("tenant_id", "name"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(128))
    # the highest version number it ever had: a new version takes the next one, so the number of a
    # deleted version is never given again (``core.model_registry.register_version``)
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = _now()


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id", ondelete="RESTRICT"))
    sha256: Mapped[str] = mapped_column(String(64))
    signature: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source_job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = _now()
    # resident memory the version took when it last loaded (bytes); placement uses it (serving.placement)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # GPU memory it took when it last loaded on a server with a GPU (bytes; null: never)
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)


class Deployment(Base):
    """The one live deployment of a model; batching settings follow Triton's meanings."""

    __tablename__ = "deployments"
    __table_args__ = (
        CheckConstraint(
            "min_replicas >= 0 AND max_replicas >= 1 AND max_replicas >= min_replicas AND target_concurrency >= 1 "
            "AND idle_timeout_s >= 1 AND cold_start_timeout_ms >= 0",
            name="scaling",
        ),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"), unique=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="RESTRICT"))
    max_batch_size: Mapped[int] = mapped_column(Integer)
    max_queue_delay_us: Mapped[int] = mapped_column(Integer)
    max_queue_size: Mapped[int] = mapped_column(Integer)
    timeout_ms: Mapped[int] = mapped_column(Integer)
    # serverless scaling (core.deployments.ScalingSettings; serving.placement decides with them)
    min_replicas: Mapped[int] = mapped_column(Integer, server_default="0")
    max_replicas: Mapped[int] = mapped_column(Integer, server_default="1")
    target_concurrency: Mapped[int] = mapped_column(Integer, server_default="16")
    idle_timeout_s: Mapped[int] = mapped_column(Integer, server_default="300")
    cold_start_timeout_ms: Mapped[int] = mapped_column(Integer, server_default="30000")
    # a request waits for a replica since then (core.serving_signals.signal_demand); cleared once one is ready
    demand_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # why no replica can be placed (the deployment is failed while it is set)
    placement_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="status"),
        Index(None, "tenant_id", "id"),
    )
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    is_async: Mapped[bool] = mapped_column(Boolean, default=False)
    # how a synchronous request arrived: http (/v2) or grpc; null for asynchronous predictions
    transport: Mapped[str | None] = mapped_column(String(8))
    input: Mapped[dict[str, Any] | None]
    output: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    queue_ms: Mapped[float | None]
    inference_ms: Mapped[float | None]
    webhook: Mapped[str | None] = mapped_column(Text)
    webhook_events_filter: Mapped[list[Any]] = mapped_column(default=list)
    # an asynchronous prediction's last message to the inference queue (the reconciler re-sends lost ones)
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # the ONNX Runtime call that served it: requests sharing a batch_id ran together
    batch_id: Mapped[str | None] = mapped_column(String(64))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _now()
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ModelServerRecord(Base):
    """A model server (``maas serve``, ``serving.server``): where its data plane listens, and that it is alive.

    Rows whose heartbeat is older than ``model_server_timeout_s`` belong to dead servers: they
    are ignored by the API's routing and deleted (with their replicas) by the live servers.
    """

    __tablename__ = "model_servers"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    url: Mapped[str] = mapped_column(Text)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    threads: Mapped[int] = mapped_column(Integer)
    # what placement may put on it (MAAS_MODEL_SERVER_MEMORY_BYTES), and what its replicas hold now
    memory_budget_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    memory_used_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    # the same for its GPU (MAAS_MODEL_SERVER_GPU_MEMORY_BYTES); 0: no GPU, placement counts memory only
    gpu_memory_budget_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    gpu_memory_used_bytes: Mapped[int] = mapped_column(BigInteger, server_default="0")
    started_at: Mapped[datetime] = _now()
    heartbeat_at: Mapped[datetime] = _now()


class ModelReplica(Base):
    """One model version loaded (or being loaded, drained, or failed to load) on one model server."""

    __tablename__ = "model_replicas"
    __table_args__ = (
        CheckConstraint(_in("status", REPLICA_STATUSES), name="status"),
        Index(None, "model_version_id"),
        Index(None, "server_id"),
    )
    server_id: Mapped[str] = mapped_column(ForeignKey("model_servers.id", ondelete="CASCADE"), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)  # measured once loaded; an estimate before
    gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)  # the same on its server's GPU (0: none)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # the last request's arrival
    in_flight: Mapped[int] = mapped_column(Integer, server_default="0")  # requests queued or running there
    evict_reason: Mapped[str | None] = mapped_column(Text)  # set by the placer: drain, unload, delete the row
    created_at: Mapped[datetime] = _now()
    updated_at: Mapped[datetime] = _now()


class ServingEvent(Base):
    """A placement, load, unload or scale decision about a model's replicas, with its reason."""

    __tablename__ = "serving_events"
    __table_args__ = (
        CheckConstraint(_in("action", SERVING_ACTIONS), name="action"),
        Index(None, "model_id", "id"),
    )
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    model_version_id: Mapped[str | None] = mapped_column(String(40))
    server_id: Mapped[str | None] = mapped_column(String(40))
    action: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = _now()


class WebhookDelivery(Base):
    """One event sent to one URL; ``id`` is the stable ``webhook-id`` header across retries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index(None, "subject_id"), Index(None, "status", "next_attempt_at"))
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    subject_id: Mapped[str] = mapped_column(String(40))
    event: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[list[Any]] = mapped_column(default=list)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookSecret(Base):
    __tablename__ = "webhook_secrets"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    secret: Mapped[str] = mapped_column(String(100))
    # still signed with, next to the new one, for a while after a rotation
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    rotated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _now()


class IdempotencyKey(Base):
    """A create request's key; ``response_*`` is filled once the first request finished."""

    __tablename__ = "idempotency_keys"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    method: Mapped[str] = mapped_column(String(10))
    path: Mapped[str] = mapped_column(Text)
    request_sha256: Mapped[str] = mapped_column(String(64))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = _now()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class TenantQuota(Base):
    """A tenant's own value of one quota (``core.quotas``); a quota without a row takes the setting's default."""

    __tablename__ = "tenant_quotas"
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = _now()


class UsageHour(Base):
    """One usage measure of one tenant in one hour (``core.usage``): a counter the processes add to in bulk,
    or (``bytes_stored``) the largest sample of the hour. ``subject`` is the model version or the job type
    the measure is about ('' when none); ``transport`` how inference arrived (http, grpc, async; '' otherwise)."""

    __tablename__ = "usage_hourly"
    __table_args__ = (Index(None, "tenant_id", "hour"),)
    hour: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    metric: Mapped[str] = mapped_column(String(32), primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), primary_key=True, default="")
    transport: Mapped[str] = mapped_column(String(8), primary_key=True, default="")
    value: Mapped[float]


class RateBucket(Base):
    """A token bucket shared by every API process (``core.rate_buckets``): its tokens when last touched."""

    __tablename__ = "rate_buckets"
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    tokens: Mapped[float]
    granted: Mapped[int] = mapped_column(Integer)  # what the last lease got (returned by the same UPDATE)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
