"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService``, served by the API process.

A ``grpc.aio`` server on ``MAAS_GRPC_PORT``, on the API's event loop, in front of the same
:class:`~api.inference_router.InferenceRouter` as the REST ``/v2`` routes: one routing table, one
set of input checks, one call to the model servers (whose batchers merge REST and gRPC requests
into the same ONNX Runtime calls), one ``predictions`` record per request (``transport`` grpc).
Only the transport differs: tensors decode in ``api.grpc_tensors`` instead of ``core.tensor_codec``'s
JSON, and the same API keys arrive as ``authorization: Bearer …`` metadata.

Errors are gRPC status codes with the REST message: UNAUTHENTICATED (no, unknown or revoked key),
NOT_FOUND (unknown model or version, or another tenant's), INVALID_ARGUMENT (bad input, named),
UNAVAILABLE (not ready yet, queue full, no replica), DEADLINE_EXCEEDED (timed out in the queue),
RESOURCE_EXHAUSTED (a message over ``MAAS_GRPC_MAX_MESSAGE_BYTES``; grpc refuses it before any
handler runs). The client's deadline bounds the request's time in the model server's queue, so a
request whose client gave up is dropped there, never run. On shutdown the server refuses new calls
and gives those in flight ``MAAS_GRPC_STOP_GRACE_S`` to finish.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc
from aiohttp import web

from api.auth import tenant_of
from api.context import CONTEXT, ApiContext
from api.grpc_tensors import decode_infer_request, encode_infer_response
from api.inference_router import ROUTER, InferenceFailed, InferenceRouter
from api.oip_grpc import open_inference_grpc_pb2 as pb
from api.oip_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from api.problems import Problem
from api.rate_limits import INFERENCE, QUOTA_OF
from api.routes.inference import (
    PLATFORM,
    TensorMetadata,
    model_metadata_of,
    model_ready_of,
    server_metadata_of,
    target_of,
    why_no_route,
)
from api.routing_table import RouteError
from core.tensor_codec import CodecError, InferenceRequest

log = logging.getLogger("maas.api.grpc")

SERVICE = "inference.GRPCInferenceService"
# the gRPC code of each HTTP status the shared code answers with
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
T = TypeVar("T")


class _Refused(Exception):
    """The call ends with ``code`` and ``message``."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def status_of(http_status: int) -> grpc.StatusCode:
    return STATUS_CODES.get(http_status, grpc.StatusCode.INTERNAL)


class InferenceService(pb_grpc.GRPCInferenceServiceServicer):
    """The six methods, each authenticated, timed and counted, errors mapped to status codes."""

    def __init__(self, ctx: ApiContext, router: InferenceRouter) -> None:
        self.ctx = ctx
        self.router = router

    async def _answer(
        self,
        method: str,
        context: grpc.aio.ServicerContext,
        handle: Callable[[str], Awaitable[T]],
        *,
        limited: bool = False,
    ) -> T:
        """``handle(tenant_id)`` for the caller's key; ``limited``: after taking an inference token (rate_limits)."""
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        message = ""
        try:
            authorization = _authorization(context)  # read once: the metadata is a fresh tuple on every access
            tenant_id = await tenant_of(self.ctx, authorization)
            if limited:
                await self._limit(tenant_id, authorization, context)
            return await handle(tenant_id)
        except _Refused as exc:
            code, message = exc.code, exc.message
        except Problem as problem:
            code, message = status_of(problem.status), problem.detail
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            code, message = grpc.StatusCode.INTERNAL, "internal error; it was logged"
        finally:
            self.ctx.metrics.observe_grpc(method, code.name, time.perf_counter() - started)
        await context.abort(code, message)
        raise AssertionError("abort returns only by raising")  # pragma: no cover

    async def _limit(self, tenant_id: str, authorization: str, context: grpc.aio.ServicerContext) -> None:
        """Take an inference token (api/rate_limits.py); the rate-limit headers go back as trailing metadata."""
        decision = await self.ctx.rates.take(tenant_id, authorization, INFERENCE)
        if decision is None:
            return
        context.set_trailing_metadata(tuple((name.lower(), value) for name, value in decision.headers().items()))
        if not decision.allowed:
            raise _Refused(grpc.StatusCode.RESOURCE_EXHAUSTED, decision.problem(QUOTA_OF[INFERENCE]).detail)

    async def ServerLive(self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(tenant_id: str) -> pb.ServerLiveResponse:
            return pb.ServerLiveResponse(live=True)

        return await self._answer("ServerLive", context, handle)

    async def ServerReady(self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(tenant_id: str) -> pb.ServerReadyResponse:
            # as on /v2/health/ready: ready while one of the caller's deployed models can serve
            return pb.ServerReadyResponse(ready=self.router.table.tenant_ready(tenant_id))

        return await self._answer("ServerReady", context, handle)

    async def ServerMetadata(self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(tenant_id: str) -> pb.ServerMetadataResponse:
            found = server_metadata_of()
            return pb.ServerMetadataResponse(name=found.name, version=found.version, extensions=found.extensions)

        return await self._answer("ServerMetadata", context, handle)

    async def ModelMetadata(self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(tenant_id: str) -> pb.ModelMetadataResponse:
            name, version = target_of(request.name, request.version or None)
            found = await model_metadata_of(self.ctx.db, tenant_id, name, version)
            return pb.ModelMetadataResponse(
                name=found.name,
                versions=found.versions,
                platform=PLATFORM,
                inputs=[_tensor_metadata(tensor) for tensor in found.inputs],
                outputs=[_tensor_metadata(tensor) for tensor in found.outputs],
            )

        return await self._answer("ModelMetadata", context, handle)

    async def ModelReady(self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(tenant_id: str) -> pb.ModelReadyResponse:
            name, version = target_of(request.name, request.version or None)
            try:
                await model_ready_of(self.router, self.ctx.db, tenant_id, name, version)
            except Problem as problem:
                if problem.status == 503:  # known and deployed, not serving yet: an answer, not an error
                    return pb.ModelReadyResponse(ready=False)
                raise
            return pb.ModelReadyResponse(ready=True)

        return await self._answer("ModelReady", context, handle)

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        async def handle(tenant_id: str) -> pb.ModelInferResponse:
            return await self._infer(tenant_id, request, context)

        return await self._answer("ModelInfer", context, handle, limited=True)

    async def _infer(
        self, tenant_id: str, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        name, version = target_of(request.model_name, request.model_version or None)
        max_elements = self.ctx.settings.max_tensor_elements

        def decode() -> InferenceRequest:
            return decode_infer_request(request, max_elements)

        remaining = context.time_remaining()
        deadline_ms = max(1, math.ceil(remaining * 1000)) if remaining is not None else None
        try:
            result = await self.router.infer(
                tenant_id, name, version, decode, transport="grpc", deadline_ms=deadline_ms
            )
            return encode_infer_response(
                result.outputs,
                result.request,
                raw=bool(request.raw_input_contents),
                model_name=name,
                model_version=str(result.target.version.number),
            )
        except RouteError as exc:
            raise await why_no_route(self.ctx.db, tenant_id, name, version, exc) from None
        except InferenceFailed as exc:
            raise _Refused(status_of(exc.status), exc.message) from None
        except CodecError as exc:
            raise _Refused(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None


def _authorization(context: grpc.aio.ServicerContext) -> str:
    """The ``authorization`` metadata (the last one when sent twice), without building a dict of it all."""
    header: str | bytes = ""
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            header = value
    return header if isinstance(header, str) else header.decode()


def _tensor_metadata(tensor: TensorMetadata) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)


class GrpcEndpoint:
    """The ``grpc.aio`` server of one API process; ``port`` is the one bound (``MAAS_GRPC_PORT`` 0: a free one)."""

    def __init__(self, ctx: ApiContext, router: InferenceRouter) -> None:
        settings = ctx.settings
        self.host = settings.grpc_host or settings.api_host
        self.grace_s = settings.grpc_stop_grace_s
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.grpc_max_message_bytes),
                ("grpc.max_send_message_length", settings.grpc_max_message_bytes),
                ("grpc.so_reuseport", 0),  # a port in use is an error, not a second listener
            ]
        )
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(ctx, router), self._server)
        address = _address(self.host, settings.grpc_port)
        try:
            self.port = self._server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc only says "Failed to bind"
            raise RuntimeError(
                f"the gRPC endpoint cannot listen on {address} (is the port taken?); set MAAS_GRPC_PORT "
                "(0: a free port) or MAAS_GRPC_ENABLED=false"
            ) from exc
        self._stopped = False

    async def start(self) -> None:
        await self._server.start()
        log.info("gRPC inference service %s listening on %s", SERVICE, _address(self.host, self.port))

    async def stop(self) -> None:
        """Refuse new calls, let those in flight finish for up to ``grpc_stop_grace_s``, then close."""
        if self._stopped:
            return
        self._stopped = True
        await self._server.stop(self.grace_s)


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


GRPC_ENDPOINT = web.AppKey("grpc_endpoint", GrpcEndpoint)


async def grpc_context(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context (after the router's): the gRPC endpoint at ``app[GRPC_ENDPOINT]`` while the app runs;
    stopped before the router it calls is closed."""
    endpoint = GrpcEndpoint(app[CONTEXT], app[ROUTER])
    await endpoint.start()
    app[GRPC_ENDPOINT] = endpoint
    yield
    await endpoint.stop()


async def drain_grpc(app: web.Application) -> None:
    """``on_shutdown``: drain gRPC calls while the HTTP server drains its requests, not after."""
    endpoint = app.get(GRPC_ENDPOINT)
    if endpoint is not None:
        await endpoint.stop()
