"""Asynchronous predictions: ``POST /v1/predictions`` (inputs as Open Inference Protocol tensors,
checked against the model's signature before anything is stored), ``GET``, ``Prefer: wait=N``,
webhooks, idempotency, and cancel of a prediction that is still queued."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import Field
from sqlalchemy import select

from api.context import ApiContext, commit_and_send, context
from api.endpoints import Call, Endpoints
from api.prefer_wait import hold
from api.problems import Problem, not_found, validation_problem
from core import predictions as prediction_service
from core.model_registry import find_version
from core.models import Deployment, Model, ModelVersion, Prediction
from core.objects import PredictionObject
from core.spec_kit import INT4_MAX, MODEL_NAME_PATTERN, StrictModel
from core.tensor_codec import CodecError, decode_tensors, validate_against_signature
from core.webhooks import EVENTS, UnsafeWebhookUrl, check_url

predictions = Endpoints("predictions")


class PredictionCreate(StrictModel):
    model: str = Field(pattern=MODEL_NAME_PATTERN, description="the name of a deployed model")
    version: int | None = Field(
        default=None, ge=1, le=INT4_MAX, description="the version to run; default: the deployed one"
    )
    inputs: list[dict[str, Any]] = Field(min_length=1, max_length=64, description="Open Inference Protocol tensors")
    timeout_ms: int = Field(
        default=60_000,
        ge=1,
        le=3_600_000,
        description="how long it may wait in the model server's queue, in milliseconds; past it, it fails",
    )
    webhook: str | None = Field(
        default=None, max_length=2048, description="a URL told of the prediction's events (Standard Webhooks)"
    )
    webhook_events_filter: list[Literal["start", "completed"]] | None = Field(
        default=None, description="the events sent to `webhook`; default: both"
    )


async def _load(ctx: ApiContext, tenant_id: str, prediction_id: str) -> PredictionObject:
    async with ctx.db() as session:
        found = (
            await session.execute(
                select(Prediction, Model.name, ModelVersion.version)
                .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
                .join(Model, Model.id == ModelVersion.model_id)
                .where(Prediction.id == prediction_id, Prediction.tenant_id == tenant_id, Prediction.is_async)
            )
        ).first()
    if found is None:
        raise not_found("prediction", prediction_id)
    prediction, name, version = found
    return PredictionObject.from_row(prediction, name, version, ctx.settings.public_base_url)


async def _wait(
    ctx: ApiContext, tenant_id: str, current: PredictionObject, request: web.Request, call: Call[Any, Any]
) -> PredictionObject:
    """The prediction, or its terminal state when the request asked to wait for it."""
    return await hold(
        request, call, ctx.settings.max_wait_s, current, lambda p: p.status, lambda: _load(ctx, tenant_id, current.id)
    )


def _check_inputs(body: PredictionCreate, version: ModelVersion, max_elements: int) -> None:
    try:
        tensors = decode_tensors(body.inputs, max_elements=max_elements)
        validate_against_signature(tensors, version.signature, max_elements)
    except CodecError as exc:
        raise validation_problem([{"pointer": "/inputs", "detail": str(exc)}]) from None


@predictions.post(
    "/v1/predictions",
    summary="Run a deployed model asynchronously; `Prefer: wait=N` holds the answer",
    body=PredictionCreate,
    response=PredictionObject,
    status=201,
    idempotent=True,
    errors=(404, 409),
)
async def create_prediction(request: web.Request, call: Call[PredictionCreate, None]) -> PredictionObject:
    ctx = context(request)
    body = call.body
    if body.webhook:
        try:
            check_url(body.webhook, allow_private=ctx.settings.webhook_allow_private_targets)
        except UnsafeWebhookUrl as exc:
            raise validation_problem([{"pointer": "/webhook", "detail": str(exc)}]) from None

    def create(session) -> PredictionObject:
        deployed = session.execute(
            select(Deployment, ModelVersion.version)
            .join(Model, Model.id == Deployment.model_id)
            .join(ModelVersion, ModelVersion.id == Deployment.model_version_id)
            .where(Model.tenant_id == call.tenant_id, Model.name == body.model)
        ).first()
        version = find_version(session, call.tenant_id, body.model, body.version or (deployed and deployed[1]))
        if version is None:
            raise not_found("model version", f"{body.model}:{body.version or 'deployed'}")
        if deployed is None:
            raise Problem(409, f"model {body.model!r} is not deployed; PUT /v1/models/{body.model}/deployment first")
        _check_inputs(body, version, ctx.settings.max_tensor_elements)
        prediction = prediction_service.create_prediction(
            session,
            tenant_id=call.tenant_id,
            model_version_id=version.id,
            inputs={"inputs": body.inputs, "timeout_ms": body.timeout_ms},
            webhook=body.webhook,
            webhook_events_filter=[*(body.webhook_events_filter or (e for e in EVENTS if e != "progress"))],
        )
        rendered = PredictionObject.from_row(prediction, body.model, version.version, ctx.settings.public_base_url)
        if call.idempotency:
            call.idempotency.record(session, 201, rendered.model_dump(mode="json"))
        return rendered

    async with ctx.db() as session:
        rendered = await session.run_sync(create)
        await commit_and_send(ctx, session)
    return await _wait(ctx, call.tenant_id, rendered, request, call)


@predictions.get(
    "/v1/predictions/{id}",
    summary="A prediction; `Prefer: wait=N` holds until it ends",
    response=PredictionObject,
    errors=(404,),
)
async def get_prediction(request: web.Request, call: Call[None, None]) -> PredictionObject:
    ctx = context(request)
    current = await _load(ctx, call.tenant_id, call.params["id"])
    return await _wait(ctx, call.tenant_id, current, request, call)


@predictions.post(
    "/v1/predictions/{id}/cancel",
    summary="Cancel a prediction that has not started",
    response=PredictionObject,
    errors=(404, 409),
)
async def cancel_prediction(request: web.Request, call: Call[None, None]) -> PredictionObject:
    ctx = context(request)
    current = await _load(ctx, call.tenant_id, call.params["id"])
    if current.status == "queued":

        def cancel(session) -> None:
            prediction_service.transition(
                session,
                current.id,
                "canceled",
                view=lambda p: PredictionObject.from_row(
                    p, current.model, current.version, ctx.settings.public_base_url
                ),
            )

        async with ctx.db() as session:
            await session.run_sync(cancel)
            await commit_and_send(ctx, session)
        current = await _load(ctx, call.tenant_id, current.id)
    if current.status != "canceled":
        raise Problem(
            409,
            f"the prediction is {current.status}; only a queued one can be canceled",
            prediction=current.model_dump(mode="json"),
        )
    return current
