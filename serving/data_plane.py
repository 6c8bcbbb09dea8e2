"""The model server's HTTP data plane: the routes the API calls, thin over the replicas it holds.

- ``POST /v1/infer/{version_id}``: ``core.tensor_wire`` in and out, through the version's batcher;
- ``GET /metrics``: the per-model Prometheus series (``serving.metrics``);
- ``GET /healthz``: the server's id and how many versions it holds.

Answers of the infer route: 200 outputs (+ ``queue_ms``, ``inference_ms``, ``batch_id``,
``batch_size``); 400 input the batcher refuses, or the model cannot run (it failed on this request
alone: ``serving.batcher.UnrunnableInput``); 421 this server does not serve that version
(unknown, loading, unloading): the API retries elsewhere; 503 queue full (Retry-After);
504 timed out in the queue (never run); 500 the model call failed for a reason the client cannot cause.

It never loads, swaps or drops a replica: that is the control loop's (``serving.control_loop``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping

from aiohttp import web

from core.tensor_wire import CONTENT_TYPE, WireError, pack, unpack
from serving.batcher import BatcherClosed, InvalidItem, QueueFull, QueueTimeout, UnrunnableInput
from serving.metrics import ModelServerMetrics
from serving.plan import UNLOADING
from serving.replica import LoadedReplica

log = logging.getLogger("maas.model_server")

NOT_SERVED_HERE = 421  # Misdirected Request: the API asks another replica


class DataPlane:
    """The routes of one model server; ``replicas`` is the control loop's live mapping, read per request."""

    def __init__(self, server_id: str, replicas: Mapping[str, LoadedReplica], metrics: ModelServerMetrics) -> None:
        self.server_id = server_id
        self.replicas = replicas
        self.metrics = metrics

    def app(self, max_body_bytes: int) -> web.Application:
        app = web.Application(client_max_size=max_body_bytes)
        app.router.add_post("/v1/infer/{version_id}", self.infer)
        app.router.add_get("/metrics", self.render_metrics)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def infer(self, request: web.Request) -> web.Response:
        version_id = request.match_info["version_id"]
        try:
            arrays, meta = unpack(await request.read())
        except WireError as exc:
            return _error(400, str(exc))
        timeout_ms = meta.get("timeout_ms")
        for _ in range(2):  # a batcher swapped for new settings refuses; its successor takes the request
            replica = self.replicas.get(version_id)
            batcher = replica.batcher if replica is not None and replica.status != UNLOADING else None
            if replica is None or batcher is None:
                break
            replica.request_started(time.monotonic())  # the placer's autoscaler and idle timeout read these
            try:
                outputs, info = await batcher.submit_with_info(arrays, timeout_ms)
            except BatcherClosed:
                continue
            except QueueFull as exc:
                return _error(503, str(exc), {"Retry-After": "1"})
            except QueueTimeout as exc:
                return _error(504, f"the request waited in the queue past its timeout: {exc}")
            except (InvalidItem, UnrunnableInput) as exc:
                return _error(400, str(exc))
            except Exception as exc:
                log.warning("%s: model call failed: %s", replica.labels, exc)
                return _error(500, f"the model failed on this batch: {type(exc).__name__}: {exc}")
            finally:
                replica.request_ended(time.monotonic())
            stats = {
                "queue_ms": round(info.queue_s * 1000, 3),
                "inference_ms": round(info.run_s * 1000, 3),
                "batch_id": f"{self.server_id}-{info.number}",
                "batch_size": info.rows,
            }
            return web.Response(body=pack(outputs, stats), content_type=CONTENT_TYPE)
        return _error(NOT_SERVED_HERE, f"model version {version_id} is not served by {self.server_id}")

    async def render_metrics(self, request: web.Request) -> web.Response:
        response = web.Response(body=self.metrics.render())
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "id": self.server_id, "replicas": len(self.replicas)})


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )
