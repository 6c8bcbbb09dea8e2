"""Runs asynchronous predictions (inference queue): claims one, sends its inputs to a model server
that holds the version (where they are batched with the synchronous traffic), records the outputs.

A prediction whose worker dies while it runs is redelivered (acks_late) and, still ``running``,
is failed by the next delivery rather than run twice.

A prediction for a deployment scaled to zero waits for a cold start like a synchronous request
(``api.cold_start``), with the same budget (the deployment's ``cold_start_timeout_ms``): it asks
for a replica once (``core.serving_signals.signal_demand``) and, having no ``LISTEN`` connection
in a Celery worker, polls the ready replicas every ``COLD_START_POLL_S`` until one is there. A deployment
that cannot be served (its ``placement_error``, or every load of it failed: ``core.deployments.load_failure``,
the rule the API's router applies to synchronous requests) fails the prediction at once with that reason.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import urllib3
from celery import shared_task
from sqlalchemy import select

from core import usage
from core.deployments import READY, live_since, load_failure
from core.dispatch import commit_and_send
from core.job_states import QUEUED, RUNNING
from core.models import Deployment, Model, ModelReplica, ModelServerRecord, ModelVersion, Prediction
from core.objects import PredictionObject
from core.predictions import RUN_TASK, transition
from core.serving_signals import signal_demand
from core.tensor_codec import CodecError, decode_tensors, tensor_to_json
from core.tensor_wire import CONTENT_TYPE, pack, unpack
from workers.runtime import WorkerRuntime, runtime

log = logging.getLogger("maas.predictions")
_http = urllib3.PoolManager(retries=False)
NOT_SERVED_HERE, QUEUE_FULL, BAD_INPUT = 421, 503, 400
BUSY_RETRIES = 20
COLD_START_POLL_S = 0.1


class PredictionFailed(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _replicas(rt: WorkerRuntime, version_id: str) -> tuple[list[str], str | None]:
    """The servers where ``version_id`` is ready, and why its deployment cannot be served (None while it may)."""
    with rt.db() as session:
        states = session.execute(
            select(ModelServerRecord.url, ModelReplica.status, ModelReplica.error)
            .join(ModelReplica, ModelReplica.server_id == ModelServerRecord.id)
            .where(
                ModelReplica.model_version_id == version_id,
                ModelServerRecord.heartbeat_at > live_since(rt.settings),
            )
        ).all()
        ready = [url for url, status, _ in states if status == READY]
        if ready:  # the common case: one query
            return ready, None
        placement_error = session.scalar(
            select(Deployment.placement_error).where(Deployment.model_version_id == version_id)
        )
    return [], load_failure([(status, error) for _, status, error in states], placement_error)


def _cold_start(rt: WorkerRuntime, version_id: str) -> list[str]:
    """The ready servers of ``version_id`` once one of its deployment's replicas loaded; [] when none did within
    the deployment's ``cold_start_timeout_ms``. Raises :class:`PredictionFailed` as soon as none can (its
    placement or its loads failed), rather than waiting out the budget."""
    with rt.db() as session:
        deployment = session.scalars(select(Deployment).where(Deployment.model_version_id == version_id)).first()
        if deployment is None:
            return []
        model_id, budget_ms = deployment.model_id, deployment.cold_start_timeout_ms
    deadline = time.monotonic() + max(budget_ms, 0) / 1000
    asked = False
    while True:
        urls, failure = _replicas(rt, version_id)
        if urls:
            return urls
        if failure is not None:
            raise PredictionFailed("load_failed", f"the deployed version cannot be served: {failure}")
        if time.monotonic() >= deadline:
            return []
        if not asked:
            with rt.db() as session:
                signal_demand(session, model_id)
                session.commit()
            asked = True
        time.sleep(COLD_START_POLL_S)


def infer(rt: WorkerRuntime, version_id: str, inputs: list[dict[str, Any]], timeout_ms: int) -> tuple[dict, dict]:
    """Outputs and batch statistics from a model server holding ``version_id``."""
    try:
        arrays = {tensor.name: tensor.data for tensor in decode_tensors(inputs)}
    except CodecError as exc:
        raise PredictionFailed("bad_input", str(exc)) from None
    body = pack(arrays, {"timeout_ms": timeout_ms})
    for _ in range(BUSY_RETRIES):
        urls = _replicas(rt, version_id)[0] or _cold_start(rt, version_id)
        if not urls:
            raise PredictionFailed(
                "not_ready", "no model server holds this version now, and none loaded it within its cold start budget"
            )
        for url in urls:
            try:
                response = _http.request(
                    "POST",
                    f"{url}/v1/infer/{version_id}",
                    body=body,
                    headers={"Content-Type": CONTENT_TYPE},
                    timeout=urllib3.Timeout(connect=2, read=timeout_ms / 1000 + 30),
                )
            except urllib3.exceptions.HTTPError as exc:
                log.warning("model server %s unreachable: %s", url, exc)
                continue
            if response.status == 200:
                return unpack(response.data)
            if response.status in (NOT_SERVED_HERE, QUEUE_FULL):
                continue
            # 400: input the model server refuses or the model cannot run (it failed on this request alone)
            code = "bad_input" if response.status == BAD_INPUT else "inference_failed"
            raise PredictionFailed(code, _error_message(response.data))
        time.sleep(0.25)
    raise PredictionFailed("busy", "every model server holding this version stayed busy")


def _error_message(payload: bytes) -> str:
    """The model server's ``{"error": ...}``, or its answer as it came."""
    text = payload.decode(errors="replace")
    try:
        return str(json.loads(text)["error"])
    except (ValueError, KeyError, TypeError):
        return text


@shared_task(bind=True, name=RUN_TASK)
def run(self, prediction_id: str) -> None:
    rt = runtime()
    with rt.db() as session:
        found = session.execute(
            select(Prediction, Model.name, ModelVersion.version, ModelVersion.id)
            .join(ModelVersion, ModelVersion.id == Prediction.model_version_id)
            .join(Model, Model.id == ModelVersion.model_id)
            .where(Prediction.id == prediction_id)
        ).first()
        if found is None or found[0].status not in (QUEUED, RUNNING):
            return
        prediction, name, version, version_id = found

        def view(p: Prediction) -> PredictionObject:
            return PredictionObject.from_row(p, name, version, rt.settings.public_base_url)

        if prediction.status == RUNNING:  # its first worker died mid-way: do not run it twice
            transition(
                session,
                prediction_id,
                "failed",
                view=view,
                values={"error": {"code": "worker_lost", "message": "the worker running it was lost"}},
            )
            commit_and_send(session, self.app)
            return
        if transition(session, prediction_id, RUNNING, view=view) is None:
            return  # canceled meanwhile
        commit_and_send(session, self.app)
    try:
        outputs, stats = infer(rt, version_id, prediction.input["inputs"], prediction.input.get("timeout_ms", 60_000))
        values = {
            "output": {"outputs": [tensor_to_json(k, v) for k, v in outputs.items()]},
            "queue_ms": stats.get("queue_ms"),
            "inference_ms": stats.get("inference_ms"),
            "batch_id": stats.get("batch_id"),
            "batch_size": stats.get("batch_size"),
        }
        target = "succeeded"
    except PredictionFailed as exc:
        values, target = {"error": {"code": exc.code, "message": exc.message}}, "failed"
    with rt.db() as session:
        done = transition(session, prediction_id, target, view=view, values=values)
        if done is not None and rt.settings.usage_metering_enabled:  # metered with its end, in one transaction
            ok = target == "succeeded"
            rows = int((prediction.input["inputs"][0].get("shape") or [1])[0]) if ok else 0
            ms, batch = (stats.get("inference_ms"), stats.get("batch_size")) if ok else (None, None)
            usage.record_inference(session, prediction.tenant_id, version_id, "async", rows, ms, batch)
        commit_and_send(session, self.app)
