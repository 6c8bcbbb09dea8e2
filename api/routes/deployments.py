"""A model's deployment over HTTP: which version serves, with which batching settings, and where it is ready.

``PUT`` creates or replaces it (a new version switches without dropping requests: the old one
serves until the new one is ready), with its batching and scaling settings (``min_replicas``…;
a PUT starts one replica at once), ``GET`` shows it with its replicas (where, state, memory,
last use) and its latest serving events, ``DELETE`` undeploys (the replicas drain, then unload).
The model servers do the work; see ``serving.placer`` and ``serving.control_loop``.
"""

from __future__ import annotations

from aiohttp import web
from pydantic import Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import context
from api.endpoints import Call, Endpoints
from api.problems import Problem, not_found, quota_problem, validation_problem
from api.routes.models import model_name
from core import quotas
from core.deployments import (
    BatchingSettings,
    ScalingSettings,
    batching_problems,
    delete_deployment,
    deployment_status,
    live_replicas,
    upsert_deployment,
)
from core.models import Deployment, Model, ModelVersion, ServingEvent
from core.objects import DeploymentObject, ReplicaObject, ServingEventObject
from core.settings import Settings
from core.spec_kit import INT4_MAX, FieldProblem, StrictModel

deployments = Endpoints("deployments")
EVENTS = 20  # serving events shown with a deployment


class DeploymentPut(StrictModel):
    version: int = Field(ge=1, le=INT4_MAX, description="the version to serve")
    max_batch_size: int = Field(default=32, ge=1, le=1024, description="most rows merged into one model call")
    max_queue_delay_us: int = Field(
        default=500,
        ge=0,
        le=10_000_000,
        description="how long the oldest queued request waits for others to join it, in microseconds",
    )
    max_queue_size: int = Field(
        default=1024, ge=1, le=100_000, description="requests waiting per replica; past it, 503 with Retry-After"
    )
    timeout_ms: int = Field(
        default=10_000,
        ge=0,
        le=3_600_000,
        description="a request still queued after this many milliseconds is dropped (0: never)",
    )
    min_replicas: int = Field(
        default=0, ge=0, le=1000, description="replicas always kept loaded; 0: scale to zero when idle"
    )
    max_replicas: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="most replicas the autoscaler adds under load (at most one per model server); at least "
        "min_replicas",
    )
    target_concurrency: int = Field(
        default=16,
        ge=1,
        le=100_000,
        description="in-flight requests per replica the autoscaler aims at: above it for a while, one more replica",
    )
    idle_timeout_s: int = Field(
        default=300,
        ge=1,
        le=30 * 86_400,
        description="a replica above min_replicas without a request this long unloads",
    )
    cold_start_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        le=3_600_000,
        description="how long a request waits for a replica to become ready; past it, 503 with Retry-After",
    )


BATCHING = set(BatchingSettings.__dataclass_fields__)
SCALING = set(ScalingSettings.__dataclass_fields__)


def _model(session: Session, tenant_id: str, name: str) -> Model:
    model = session.scalar(select(Model).where(Model.tenant_id == tenant_id, Model.name == name))
    if model is None:
        raise not_found("model", name)
    return model


def _render(session: Session, settings: Settings, model: Model, deployment: Deployment) -> DeploymentObject:
    numbers = dict(
        session.execute(select(ModelVersion.id, ModelVersion.version).where(ModelVersion.model_id == model.id)).all()
    )
    replicas = live_replicas(session, settings, numbers)
    events = session.scalars(
        select(ServingEvent).where(ServingEvent.model_id == model.id).order_by(ServingEvent.id.desc()).limit(EVENTS)
    )
    statuses = (r.status for r in replicas if r.model_version_id == deployment.model_version_id)
    return DeploymentObject.from_row(
        deployment,
        model=model.name,
        version=numbers[deployment.model_version_id],
        status=deployment_status(statuses, deployment.placement_error),
        replicas=[ReplicaObject.from_row(r, numbers[r.model_version_id]) for r in replicas],
        events=[ServingEventObject.from_row(e, numbers.get(e.model_version_id or "")) for e in events],
    )


def _check_quotas(session: Session, tenant_id: str, model_id: str, replicas: int, settings: Settings) -> None:
    """409 past the tenant's deployments or replicas quota (core/quotas.py), under its lock until commit."""
    is_new = session.scalar(select(Deployment.id).where(Deployment.model_id == model_id)) is None
    try:
        quotas.check_deployment(session, tenant_id, model_id, replicas, is_new, settings)
    except quotas.QuotaExceeded as exc:
        raise quota_problem(exc) from None


@deployments.put(
    "/v1/models/{name}/deployment",
    summary="Deploy a version of the model, or change the deployed version, its batching or its scaling settings",
    body=DeploymentPut,
    response=DeploymentObject,
    errors=(404, 409),
)
async def put_deployment(request: web.Request, call: Call[DeploymentPut, None]) -> DeploymentObject:
    ctx = context(request)
    name, body = model_name(call), call.body

    def deploy(session: Session) -> DeploymentObject:
        model = _model(session, call.tenant_id, name)
        version = session.scalar(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == body.version)
        )
        if version is None:
            raise Problem(404, f"model {name!r} has no version {body.version}")
        problems: list[FieldProblem] = [
            {"pointer": "/max_batch_size", "detail": p}
            for p in batching_problems(version.signature, body.max_batch_size)
        ]
        if body.max_replicas < body.min_replicas:
            detail = f"must be at least min_replicas ({body.min_replicas}); it is {body.max_replicas}"
            problems.append({"pointer": "/max_replicas", "detail": detail})
        if problems:
            raise validation_problem(problems)
        batching = BatchingSettings(**body.model_dump(include=BATCHING))
        scaling = ScalingSettings(**body.model_dump(include=SCALING))
        _check_quotas(session, call.tenant_id, model.id, getattr(body, "max_replicas", 1), ctx.settings)
        deployment = upsert_deployment(session, model.id, version, batching, scaling)
        return _render(session, ctx.settings, model, deployment)

    async with ctx.db() as session:
        rendered = await session.run_sync(deploy)
        await session.commit()
    return rendered


@deployments.get(
    "/v1/models/{name}/deployment",
    summary="The model's deployment: version, batching and scaling settings, status, replicas and serving events",
    response=DeploymentObject,
    errors=(404,),
)
async def get_deployment(request: web.Request, call: Call[None, None]) -> DeploymentObject:
    ctx = context(request)
    name = model_name(call)

    def view(session: Session) -> DeploymentObject:
        model = _model(session, call.tenant_id, name)
        deployment = session.scalar(select(Deployment).where(Deployment.model_id == model.id))
        if deployment is None:
            raise Problem(404, f"model {name!r} is not deployed")
        return _render(session, ctx.settings, model, deployment)

    async with ctx.db() as session:
        return await session.run_sync(view)


@deployments.delete(
    "/v1/models/{name}/deployment",
    summary="Undeploy the model: its replicas finish what is queued, then unload",
    status=204,
    errors=(404,),
)
async def delete_model_deployment(request: web.Request, call: Call[None, None]) -> web.Response:
    ctx = context(request)
    name = model_name(call)

    def undeploy(session: Session) -> bool:
        return delete_deployment(session, _model(session, call.tenant_id, name).id)

    async with ctx.db() as session:
        deleted = await session.run_sync(undeploy)
        await session.commit()
    if not deleted:
        raise Problem(404, f"model {name!r} is not deployed")
    return web.Response(status=204)
