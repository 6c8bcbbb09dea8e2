"""Synchronous inference: the Open Inference Protocol v2 REST routes (KServe, Triton, MLServer), under ``/v2``.

Health, server and model metadata, model readiness and ``…/infer`` with JSON tensors and the
binary tensor data extension (``Inference-Header-Content-Length``; gzip/deflate request bodies
are unpacked by the server). A stock ``tritonclient.http`` client works against it. The routes
need the same API keys as /v1; errors are ``{"error": "..."}`` with the protocol's statuses
(400 bad input, 404 unknown or undeployed model or version, 503 not ready or queue full with
Retry-After, 504 timed out in the queue) — ``api.app`` renders every /v2 error that way.

Readiness is per tenant: ``/v2/health/ready`` answers 200 while at least one of the caller's
deployed models has a ready replica, 503 otherwise. ``…/ready`` of a deployment scaled to zero
answers 503 (not ready) and loads nothing; an inference request is what starts a load, and it waits
for it (up to the deployment's ``cold_start_timeout_ms``, then 503 with Retry-After). The routes
stay thin: the routing, input checks, model-server call and record are ``api.inference_router``'s.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import async_sessionmaker

from api.context import context
from api.endpoints import Call, Endpoints
from api.inference_router import RETRY_AFTER, ROUTER, InferenceFailed, InferenceRouter
from api.problems import Problem
from api.routing_table import NotReady, RouteError
from core.model_registry import valid_name
from core.models import Deployment, Model, ModelVersion
from core.spec_kit import version_number
from core.tensor_codec import HEADER_LENGTH_HEADER, CodecError, InferenceRequest, decode_request, encode_response

inference = Endpoints("inference")

PLATFORM = "onnxruntime_onnx"
EXTENSIONS = ["binary_tensor_data"]
READ_CHUNK = 1 << 16
INFER_ERRORS = (400, 404, 413, 503, 504)
INFER_BODY_DOC = {
    "required": True,
    "description": "An OIP v2 inference request: JSON, or with the binary tensor data extension a JSON header of "
    f"`{HEADER_LENGTH_HEADER}` bytes followed by the raw tensors",
    "content": {
        "application/json": {"schema": {"type": "object", "required": ["inputs"]}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}
INFER_RESPONSE_DOC = {
    "description": "The outputs; binary ones follow a JSON header whose length is the response's "
    f"`{HEADER_LENGTH_HEADER}`",
    "content": {
        "application/json": {"schema": {"type": "object", "required": ["model_name", "outputs"]}},
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
    },
}


class ServerLive(BaseModel):
    live: bool


class ServerReady(BaseModel):
    ready: bool


class ModelReady(BaseModel):
    name: str
    version: str
    ready: bool


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


def _router(request: web.Request) -> InferenceRouter:
    return request.app[ROUTER]


def _target(call: Call[None, None]) -> tuple[str, int | None]:
    """The model name and version (None: the deployed one) named by the path; 404 when they cannot exist."""
    return target_of(call.params["name"], call.params.get("version"))


def target_of(name: str, raw: str | None) -> tuple[str, int | None]:
    """A model name and version string (None: the deployed one) as the routes take them; 404 when they cannot exist."""
    if not valid_name(name):
        raise Problem(404, f"unknown model '{name}'")
    if raw is None:
        return name, None
    number = version_number(raw)
    if number is None:
        raise Problem(404, f"model '{name}' has no version '{raw}'")
    return name, number


async def why_no_route(
    db: async_sessionmaker, tenant_id: str, name: str, version: int | None, exc: RouteError
) -> Problem:
    """The error for a request nothing can serve, told precisely: unknown, undeployed, or not ready yet.

    The database may know a deployment the routing table has not caught up with yet: that is "not ready".
    """
    if isinstance(exc, NotReady):
        return Problem(503, str(exc), headers=RETRY_AFTER)
    async with db() as session:
        rows = (
            await session.execute(
                select(ModelVersion.version, Deployment.id.is_not(None))
                .join(Model, Model.id == ModelVersion.model_id)
                .outerjoin(Deployment, Deployment.model_version_id == ModelVersion.id)
                .where(Model.tenant_id == tenant_id, Model.name == name)
            )
        ).all()
    if not rows:
        return Problem(404, f"unknown model '{name}'")
    if version is not None and version not in {number for number, _ in rows}:
        return Problem(404, f"model '{name}' has no version {version}")
    deployed = next((number for number, is_deployed in rows if is_deployed), None)
    if deployed is not None and version in (None, deployed):
        return Problem(503, f"version {deployed} of model '{name}' is deployed but not ready yet", headers=RETRY_AFTER)
    return Problem(404, f"{exc}; deploy it with PUT /v1/models/{name}/deployment")


@inference.get("/v2/health/live", summary="The inference server is live", response=ServerLive)
async def server_live(request: web.Request, call: Call[None, None]) -> ServerLive:
    return ServerLive(live=True)


@inference.get(
    "/v2/health/ready",
    summary="Ready while at least one of the caller's deployed models can serve",
    response=ServerReady,
    errors=(503,),
)
async def server_ready(request: web.Request, call: Call[None, None]) -> ServerReady:
    if not _router(request).table.tenant_ready(call.tenant_id):
        raise Problem(503, "not ready: none of this tenant's deployed models has a ready replica")
    return ServerReady(ready=True)


@inference.get("/v2", summary="Server metadata: name, version and protocol extensions", response=ServerMetadata)
async def server_metadata(request: web.Request, call: Call[None, None]) -> ServerMetadata:
    return server_metadata_of()


def server_metadata_of() -> ServerMetadata:
    try:
        version = metadata.version("maas")
    except metadata.PackageNotFoundError:
        version = "0"
    return ServerMetadata(name="maas", version=version, extensions=EXTENSIONS)


async def _model_metadata(request: web.Request, call: Call[None, None]) -> ModelMetadata:
    name, version = _target(call)
    return await model_metadata_of(context(request).db, call.tenant_id, name, version)


async def model_metadata_of(db: async_sessionmaker, tenant_id: str, name: str, version: int | None) -> ModelMetadata:
    """A model's versions, and the chosen version's (the deployed one, else the latest) inputs and outputs; 404."""
    async with db() as session:
        rows = (
            await session.execute(
                select(ModelVersion.version, ModelVersion.signature, Deployment.model_version_id == ModelVersion.id)
                .join(Model, Model.id == ModelVersion.model_id)
                .outerjoin(Deployment, Deployment.model_id == Model.id)
                .where(Model.tenant_id == tenant_id, Model.name == name)
                .order_by(ModelVersion.version)
            )
        ).all()
    if not rows:
        raise Problem(404, f"unknown model '{name}'")
    if version is None:  # the deployed version, else the latest
        chosen = next((row for row in rows if row[2]), rows[-1])
    else:
        chosen = next((row for row in rows if row[0] == version), None)
        if chosen is None:
            raise Problem(404, f"model '{name}' has no version {version}")
    signature = chosen[1]
    return ModelMetadata(
        name=name,
        versions=[str(row[0]) for row in rows],
        platform=PLATFORM,
        inputs=[_tensor_metadata(spec) for spec in signature.get("inputs", [])],
        outputs=[_tensor_metadata(spec) for spec in signature.get("outputs", [])],
    )


def _tensor_metadata(spec: dict[str, Any]) -> TensorMetadata:
    # a graph that does not state the rank: the protocol has no word for it, -1 says "some shape"
    shape = spec["shape"] if spec.get("shape") is not None else [-1]
    return TensorMetadata(name=spec["name"], datatype=spec["datatype"], shape=shape)


@inference.get(
    "/v2/models/{name}",
    summary="Model metadata: versions, platform, and the deployed (else latest) version's inputs and outputs",
    response=ModelMetadata,
    errors=(404,),
)
async def model_metadata(request: web.Request, call: Call[None, None]) -> ModelMetadata:
    return await _model_metadata(request, call)


@inference.get(
    "/v2/models/{name}/versions/{version}",
    summary="Model metadata of one version",
    response=ModelMetadata,
    errors=(404,),
)
async def model_version_metadata(request: web.Request, call: Call[None, None]) -> ModelMetadata:
    return await _model_metadata(request, call)


async def _model_ready(request: web.Request, call: Call[None, None]) -> ModelReady:
    name, version = _target(call)
    return await model_ready_of(_router(request), context(request).db, call.tenant_id, name, version)


async def model_ready_of(
    router: InferenceRouter, db: async_sessionmaker, tenant_id: str, name: str, version: int | None
) -> ModelReady:
    """Ready when a replica can serve the version now; otherwise the Problem saying why not (404 or 503)."""
    try:
        target = router.table.resolve(tenant_id, name, version)
    except RouteError as exc:
        raise await why_no_route(db, tenant_id, name, version, exc) from None
    return ModelReady(name=name, version=str(target.version.number), ready=True)


@inference.get(
    "/v2/models/{name}/ready", summary="The model can serve requests now", response=ModelReady, errors=(404, 503)
)
async def model_ready(request: web.Request, call: Call[None, None]) -> ModelReady:
    return await _model_ready(request, call)


@inference.get(
    "/v2/models/{name}/versions/{version}/ready",
    summary="This version of the model can serve requests now",
    response=ModelReady,
    errors=(404, 503),
)
async def model_version_ready(request: web.Request, call: Call[None, None]) -> ModelReady:
    return await _model_ready(request, call)


async def _read_body(request: web.Request, limit: int) -> bytes:
    """The (already decompressed) body, refused with 413 past ``limit`` bytes without reading it all."""
    too_large = Problem(413, f"the request body is larger than the limit of {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.content.iter_chunked(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _client_gone(request: web.Request) -> bool:
    """The client closed its connection (aiohttp does not cancel a handler for it: the wait must look)."""
    transport = request.transport
    return transport is None or transport.is_closing()


async def _infer(request: web.Request, call: Call[None, None]) -> web.Response:
    name, version = _target(call)
    router = _router(request)
    settings = context(request).settings
    try:  # unknown, or not ready and unable to wait: say so before reading the body
        await router.lookup(call.tenant_id, name, version)
    except RouteError as exc:
        raise await why_no_route(context(request).db, call.tenant_id, name, version, exc) from None
    body = await _read_body(request, settings.max_inference_body_bytes)
    header_length = request.headers.get(HEADER_LENGTH_HEADER)

    def decode() -> InferenceRequest:
        return decode_request(body, header_length, max_elements=settings.max_tensor_elements)

    try:
        result = await router.infer(call.tenant_id, name, version, decode, gone=lambda: _client_gone(request))
        payload, binary_header = encode_response(
            result.outputs, model_name=name, model_version=str(result.target.version.number), request=result.request
        )
    except RouteError as exc:
        raise await why_no_route(context(request).db, call.tenant_id, name, version, exc) from None
    except InferenceFailed as exc:
        raise Problem(exc.status, exc.message, headers=exc.headers) from None
    except CodecError as exc:
        raise Problem(400, str(exc)) from None
    if binary_header is None:
        return web.Response(body=payload, content_type="application/json")
    response = web.Response(body=payload, content_type="application/octet-stream")
    response.headers[HEADER_LENGTH_HEADER] = str(binary_header)
    return response


@inference.post(
    "/v2/models/{name}/infer",
    summary="Run the deployed version on a batch of inputs (JSON or binary tensors); merged with concurrent requests",
    request_doc=INFER_BODY_DOC,
    response_doc=INFER_RESPONSE_DOC,
    errors=INFER_ERRORS,
)
async def model_infer(request: web.Request, call: Call[None, None]) -> web.Response:
    return await _infer(request, call)


@inference.post(
    "/v2/models/{name}/versions/{version}/infer",
    summary="Run one version of the model (deployed, or still serving while a new one takes over)",
    request_doc=INFER_BODY_DOC,
    response_doc=INFER_RESPONSE_DOC,
    errors=INFER_ERRORS,
)
async def model_version_infer(request: web.Request, call: Call[None, None]) -> web.Response:
    return await _infer(request, call)
