"""The jobs resource: create (typed spec per job type), get, list, cancel, events (JSON pages or
Server-Sent Events, fanned out from one reader per job: api/event_fanout.py), artifacts (deleting a
finished job's: 410 afterwards) and webhook deliveries.
``Prefer: wait=N`` holds create and get until the job ends or N seconds pass.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BaseModel, Field, StringConstraints, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import event_fanout
from api.context import CONTEXT, ApiContext, commit_and_send, context
from api.deleting import run_delete
from api.endpoints import Call, Endpoints
from api.pagination import Page, PageQuery, make_page, page_statement
from api.prefer_wait import hold
from api.problems import Problem, not_found, quota_problem, validation_problem
from core import jobs as job_service
from core import quotas
from core.deletion import AlreadyDeleted
from core.deletion import delete_artifact as delete_artifact_rows
from core.models import Artifact, Job, JobEvent, WebhookDelivery
from core.objects import ArtifactDownload, ArtifactObject, JobEventObject, JobObject, Status, WebhookDeliveryObject
from core.settings import Settings
from core.spec_kit import StrictModel, validation_problems
from core.status_update import rfc3339
from core.webhooks import EVENTS, UnsafeWebhookUrl, check_url
from job_types.base import JobType

jobs = Endpoints("jobs")

SSE_KEEPALIVE_S = 15.0
MAX_METADATA_KEYS = 16
# a tenant orders its own queued jobs with it; between tenants, fair share decides (core.fair_share)
MIN_PRIORITY, MAX_PRIORITY = -100, 100
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=64)]
MetadataValue = Annotated[str, StringConstraints(max_length=512)]


class JobCreate(StrictModel):
    type: str = Field(description="a registered job type; its `spec` schema is listed in the document")
    spec: dict[str, Any] = Field(description="what to run: the schema of the job type's spec")
    webhook: str | None = Field(
        default=None, max_length=2048, description="a URL told of the job's events (Standard Webhooks)"
    )
    webhook_events_filter: list[Literal["start", "progress", "completed"]] | None = Field(
        default=None, description="the events sent to `webhook`; default: all of them"
    )
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=MAX_METADATA_KEYS,
        description=f"your own labels, returned as given: at most {MAX_METADATA_KEYS} keys of 1-64 characters, "
        "values of at most 512",
    )
    priority: int = Field(
        default=0,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description=f"{MIN_PRIORITY} to {MAX_PRIORITY}: among your own queued jobs, a higher priority starts first "
        "(then the oldest); between tenants, the one that used the queue least recently goes first",
    )


class JobListQuery(PageQuery):
    type: str | None = Field(default=None, description="only jobs of this type")
    status: Status | None = Field(default=None, description="only jobs in this status")


class EventQuery(StrictModel):
    after: str | None = Field(default=None, max_length=40, description="an event id: only later events")
    limit: int = Field(default=100, ge=1, le=1000, description="most events in the page")


class EventPage(BaseModel):
    object: str = Field(default="list", description="always `list`")
    data: list[JobEventObject] = Field(description="the events, oldest first")
    has_more: bool = Field(description="more events follow this page")
    next_cursor: str | None = Field(description="pass as `after` for the next page")


class ArtifactList(BaseModel):
    object: str = Field(default="list", description="always `list`")
    data: list[ArtifactObject] = Field(description="the job's artifacts, oldest first")


class DeliveryList(BaseModel):
    object: str = Field(default="list", description="always `list`")
    data: list[WebhookDeliveryObject] = Field(description="the job's webhook deliveries, oldest first")


async def _load_job(ctx: ApiContext, tenant_id: str, job_id: str) -> Job:
    async with ctx.db() as session:
        job = await session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise not_found("job", job_id)
    return job


async def _hold(request: web.Request, call: Call[Any, Any], job: JobObject) -> JobObject:
    """The job, or its terminal state when the request asked to wait for it."""
    ctx = context(request)

    async def reload() -> JobObject:
        return JobObject.from_row(await _load_job(ctx, call.tenant_id, job.id), ctx.settings.public_base_url)

    return await hold(request, call, ctx.settings.max_wait_s, job, lambda j: j.status, reload)


def _validate_create(ctx: ApiContext, body: JobCreate) -> tuple[JobType, BaseModel]:
    job_type = ctx.job_types.get(body.type)
    if job_type is None:
        known = ", ".join(ctx.job_types.names())
        raise validation_problem([{"pointer": "/type", "detail": f"unknown job type; known: {known}"}])
    try:
        spec = job_type.spec.model_validate(body.spec)
    except ValidationError as exc:
        raise validation_problem(validation_problems(exc, "/spec")) from None
    if body.webhook:
        try:
            check_url(body.webhook, allow_private=ctx.settings.webhook_allow_private_targets)
        except UnsafeWebhookUrl as exc:
            raise validation_problem([{"pointer": "/webhook", "detail": str(exc)}]) from None
    return job_type, spec


def _check_world(session: Session, job_type: JobType, tenant_id: str, spec: BaseModel, settings: Settings) -> None:
    """The job type's checks against files and limits; a 422 before anything is created."""
    if job_type.check is not None:
        errors = job_type.check(session, tenant_id, spec, settings)
        if errors:
            raise validation_problem([{**e, "pointer": "/spec" + e["pointer"]} for e in errors])


def _spec_variants(app: web.Application) -> dict[str, type[BaseModel]]:
    job_types = app[CONTEXT].job_types
    return {name: job_types[name].spec for name in job_types.names()}


@jobs.post(
    "/v1/jobs",
    summary="Create a job (training, compression, batch inference); `Prefer: wait=N` holds the answer",
    body=JobCreate,
    body_variants=_spec_variants,
    response=JobObject,
    status=201,
    idempotent=True,
    errors=(409,),
)
async def create_job(request: web.Request, call: Call[JobCreate, None]) -> JobObject:
    ctx = context(request)
    body = call.body
    job_type, spec = _validate_create(ctx, body)

    def create(session) -> JobObject:
        _check_world(session, job_type, call.tenant_id, spec, ctx.settings)
        try:  # under the tenant's lock until commit: two creates cannot both take the last slot
            quotas.check_new_job(session, call.tenant_id, body.type, ctx.settings)
        except quotas.QuotaExceeded as exc:
            raise quota_problem(exc) from None
        job = job_service.create_job(
            session,
            tenant_id=call.tenant_id,
            type_=body.type,
            queue=job_type.queue,
            max_attempts=job_type.max_attempts,
            spec=spec.model_dump(mode="json"),
            webhook=body.webhook,
            webhook_events_filter=list(body.webhook_events_filter or EVENTS),
            metadata=body.metadata,
            priority=body.priority,
        )
        rendered = JobObject.from_row(job, ctx.settings.public_base_url)
        if call.idempotency:
            call.idempotency.record(session, 201, rendered.model_dump(mode="json"))
        return rendered

    async with ctx.db() as session:
        rendered = await session.run_sync(create)
        await commit_and_send(ctx, session)
    return await _hold(request, call, rendered)


@jobs.get("/v1/jobs", summary="List jobs, newest first", query=JobListQuery, response=Page[JobObject])
async def list_jobs(request: web.Request, call: Call[None, JobListQuery]) -> Page[JobObject]:
    ctx = context(request)
    statement = select(Job).where(Job.tenant_id == call.tenant_id)
    if call.query.type:
        statement = statement.where(Job.type == call.query.type)
    if call.query.status:
        statement = statement.where(Job.status == call.query.status)
    async with ctx.db() as session:
        rows = list(await session.scalars(page_statement(statement, Job.id, call.query)))
    return make_page(rows, call.query, lambda job: JobObject.from_row(job, ctx.settings.public_base_url))


@jobs.get(
    "/v1/jobs/{id}",
    summary="Get a job; `Prefer: wait=N` holds until it ends",
    response=JobObject,
    errors=(404,),
)
async def get_job(request: web.Request, call: Call[None, None]) -> JobObject:
    ctx = context(request)
    job = await _load_job(ctx, call.tenant_id, call.params["id"])
    return await _hold(request, call, JobObject.from_row(job, ctx.settings.public_base_url))


@jobs.post(
    "/v1/jobs/{id}/cancel",
    summary="Cancel a job; a running one is stopped in its worker",
    response=JobObject,
    errors=(404, 409),
)
async def cancel_job(request: web.Request, call: Call[None, None]) -> JobObject:
    ctx = context(request)
    async with ctx.db() as session:
        job = await session.run_sync(
            lambda s: job_service.request_cancel(s, call.params["id"], call.tenant_id, ctx.settings)
        )
        await commit_and_send(ctx, session)
    if job is None:
        job = await _load_job(ctx, call.tenant_id, call.params["id"])  # 404, or lost a race to a terminal state
    rendered = JobObject.from_row(job, ctx.settings.public_base_url)
    if job.status in ("succeeded", "failed"):
        raise Problem(409, f"the job already ended: {job.status}", job=rendered.model_dump(mode="json"))
    return rendered


async def _event_seq(ctx: ApiContext, job_id: str, event_id: str | None) -> int:
    if not event_id:
        return 0
    async with ctx.db() as session:
        seq = await session.scalar(select(JobEvent.seq).where(JobEvent.job_id == job_id, JobEvent.id == event_id))
    if seq is None:
        raise Problem(
            400,
            f"no event {event_id!r} in this job",
            errors=[{"parameter": "after", "detail": "unknown event id"}],
        )
    return seq


async def _events_after(ctx: ApiContext, job_id: str, seq: int, limit: int) -> list[JobEvent]:
    async with ctx.db() as session:
        statement = (
            select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.seq > seq).order_by(JobEvent.seq).limit(limit)
        )
        return list(await session.scalars(statement))


@jobs.get(
    "/v1/jobs/{id}/events",
    summary="A job's events, oldest first; with `Accept: text/event-stream`, a live Server-Sent Events stream",
    query=EventQuery,
    response=EventPage,
    errors=(404,),
)
async def list_events(request: web.Request, call: Call[None, EventQuery]) -> EventPage | web.StreamResponse:
    ctx = context(request)
    job = await _load_job(ctx, call.tenant_id, call.params["id"])
    after = call.query.after or request.headers.get("Last-Event-ID")
    seq = await _event_seq(ctx, job.id, after)
    if "text/event-stream" in request.headers.get("Accept", ""):
        return await _stream_events(request, job, seq)
    rows = await _events_after(ctx, job.id, seq, call.query.limit + 1)
    has_more = len(rows) > call.query.limit
    rows = rows[: call.query.limit]
    return EventPage(
        data=[JobEventObject.model_validate(e) for e in rows],
        has_more=has_more,
        next_cursor=rows[-1].id if rows else call.query.after,
    )


async def _stream_events(request: web.Request, job: Job, seq: int) -> web.StreamResponse:
    """The job's events as Server-Sent Events, fed by the process's one reader of the job (api/event_fanout.py)."""
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
    await response.prepare(request)
    sink = event_fanout.response_sink(request, response)
    await event_fanout.stream(request.app[event_fanout.FANOUT], job.id, seq, sink, SSE_KEEPALIVE_S)
    await response.write_eof()
    return response


@jobs.get(
    "/v1/jobs/{id}/artifacts",
    summary="A job's artifacts (checkpoints, models, reports, plots)",
    response=ArtifactList,
    errors=(404,),
)
async def list_artifacts(request: web.Request, call: Call[None, None]) -> ArtifactList:
    ctx = context(request)
    job = await _load_job(ctx, call.tenant_id, call.params["id"])
    async with ctx.db() as session:
        rows = await session.scalars(select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.id))
        return ArtifactList(data=[ArtifactObject.model_validate(r) for r in rows])


def _gone(row: Artifact) -> Problem:
    """The 410 of an artifact whose content was deleted."""
    deleted_at = rfc3339(row.deleted_at) if row.deleted_at is not None else None
    return Problem(
        410,
        f"the content of artifact {row.id!r} was deleted at {deleted_at}: {row.deleted_reason or 'no reason'}",
        artifact_id=row.id,
        deleted_at=deleted_at,
        deleted_reason=row.deleted_reason,
    )


@jobs.get(
    "/v1/artifacts/{id}",
    summary="An artifact with a short-lived presigned download URL (410 once its content was deleted)",
    response=ArtifactDownload,
    errors=(404, 410),
)
async def get_artifact(request: web.Request, call: Call[None, None]) -> ArtifactDownload:
    ctx = context(request)
    async with ctx.db() as session:
        row = await session.scalar(
            select(Artifact).where(Artifact.id == call.params["id"], Artifact.tenant_id == call.tenant_id)
        )
    if row is None:
        raise not_found("artifact", call.params["id"])
    if row.deleted_at is not None:
        raise _gone(row)
    url, expires_at = await asyncio.to_thread(ctx.store.presigned_url, row.storage_key, filename=row.name)
    ctx.usage.count_download(call.tenant_id, "artifact", row.bytes)
    return ArtifactDownload.from_row(row, url, expires_at)


@jobs.delete(
    "/v1/artifacts/{id}",
    summary="Delete a finished job's artifact: its content leaves the store, the row stays marked deleted "
    "(409 while the job runs or the artifact is a model version's; 410 when deleted already)",
    response=ArtifactObject,
    errors=(404, 409, 410),
)
async def delete_artifact(request: web.Request, call: Call[None, None]) -> ArtifactObject:
    ctx = context(request)
    artifact_id = call.params["id"]
    try:
        await run_delete(ctx, "artifact", artifact_id, lambda s: delete_artifact_rows(s, call.tenant_id, artifact_id))
    except AlreadyDeleted as exc:
        raise _gone(exc.artifact) from None
    async with ctx.db() as session:
        row = await session.get_one(Artifact, artifact_id)
    return ArtifactObject.model_validate(row)


@jobs.get(
    "/v1/jobs/{id}/webhook-deliveries",
    summary="Every webhook delivery of a job and its attempts",
    response=DeliveryList,
    errors=(404,),
)
async def list_deliveries(request: web.Request, call: Call[None, None]) -> DeliveryList:
    ctx = context(request)
    job = await _load_job(ctx, call.tenant_id, call.params["id"])
    async with ctx.db() as session:
        rows = await session.scalars(
            select(WebhookDelivery).where(WebhookDelivery.subject_id == job.id).order_by(WebhookDelivery.id)
        )
        return DeliveryList(data=[WebhookDeliveryObject.model_validate(r) for r in rows])
