"""Asynchronous predictions against a deployed model: an inference worker sends them to a model server,
with Prefer: wait, idempotency, signature checks before anything is stored, webhooks, cancel."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select
from standardwebhooks.webhooks import Webhook

from core import predictions as prediction_service
from core.models import Model, ModelVersion, Prediction
from tests.support import webhook_receiver
from tests.support.api import deployed_model, json_request, register_version
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS, embedding_lookup, linear_classifier, linear_expected
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.usefixtures("model_server", "inference_worker")


async def predict(api, tenant, body: dict, headers: dict | None = None):
    return await api.post("/v1/predictions", json=body, headers={**tenant.headers, **(headers or {})})


async def test_a_prediction_runs_on_the_deployed_model(api, tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 10
    created = await predict(api, tenant, {"model": name, **json_request(x)}, {"Prefer": "wait=30"})
    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["status"] == "succeeded", body
    assert body["id"].startswith("pred_") and body["version"] == 1
    outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in body["output"]["outputs"]}
    np.testing.assert_allclose(outputs["scores"], linear_expected(x)["scores"], rtol=1e-5)
    assert body["metrics"]["inference_ms"] is not None and body["metrics"]["queue_ms"] is not None
    got = await (await api.get(f"/v1/predictions/{body['id']}", headers=tenant.headers)).json()
    assert got == body


async def test_input_the_model_cannot_run_fails_the_prediction_as_bad_input(api, tenant):
    name = await deployed_model(api, tenant, embedding_lookup(rows=8), prefix="emb")
    ids = {"name": "ids", "datatype": "INT64", "shape": [1, 2], "data": [3, 8]}  # 8 is past the table's 8 rows
    created = await predict(api, tenant, {"model": name, "inputs": [ids]}, {"Prefer": "wait=30"})
    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["status"] == "failed", body
    assert body["error"]["code"] == "bad_input"
    assert body["error"]["message"].startswith("the model cannot run this input: ")
    assert "out of data bounds" in body["error"]["message"]


async def test_idempotent_create_and_other_tenants(api, tenant, other_tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    body = {"model": name, **json_request(np.ones((1, 4), dtype=np.float32))}
    first = await (await predict(api, tenant, body, {"Idempotency-Key": "p-1"})).json()
    again = await predict(api, tenant, body, {"Idempotency-Key": "p-1"})
    assert again.headers["Idempotent-Replayed"] == "true" and (await again.json())["id"] == first["id"]
    assert (await api.get(f"/v1/predictions/{first['id']}", headers=other_tenant.headers)).status == 404
    assert (await predict(api, other_tenant, body)).status == 404


async def test_bad_predictions_are_refused_and_store_nothing(api, tenant, db):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    cases = [
        ({"model": name, **json_request(np.ones((1, 5), dtype=np.float32))}, 422, "'x'"),
        (
            {"model": name, "inputs": [{"name": "y", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]},
            422,
            "'y'",
        ),
        ({"model": name, "inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2]}]}, 422, "'x'"),
        ({"model": "no-such-model", **json_request(np.ones((1, 4), dtype=np.float32))}, 404, "no-such-model"),
        ({"model": name, "version": 9, **json_request(np.ones((1, 4), dtype=np.float32))}, 404, name),
    ]
    for body, status, words in cases:
        response = await predict(api, tenant, body)
        assert response.status == status, (body, await response.text())
        assert words in (await response.json())["detail"]
    await register_version(api, tenant, "undeployed", linear_classifier(np.eye(4, 3), np.zeros(3)))
    refused = await predict(api, tenant, {"model": "undeployed", **json_request(np.ones((1, 4), dtype=np.float32))})
    assert refused.status == 409
    with db() as session:
        assert (
            session.scalars(select(Prediction).where(Prediction.tenant_id == tenant.id, Prediction.is_async)).all()
            == []
        )


async def test_a_queued_prediction_can_be_canceled_and_a_finished_one_cannot(api, tenant, db, settings):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    with db() as session:  # queued, its message not sent yet
        version = session.scalar(
            select(ModelVersion).join(Model).where(Model.tenant_id == tenant.id, Model.name == name)
        )
        prediction = prediction_service.create_prediction(
            session,
            tenant_id=tenant.id,
            model_version_id=version.id,
            inputs={"inputs": json_request(np.ones((1, 4), dtype=np.float32))["inputs"]},
            webhook=None,
            webhook_events_filter=[],
        )
        session.commit()
    canceled = await api.post(f"/v1/predictions/{prediction.id}/cancel", headers=tenant.headers)
    assert canceled.status == 200 and (await canceled.json())["status"] == "canceled"
    done = await (
        await predict(
            api, tenant, {"model": name, **json_request(np.ones((1, 4), dtype=np.float32))}, {"Prefer": "wait=30"}
        )
    ).json()
    conflict = await api.post(f"/v1/predictions/{done['id']}/cancel", headers=tenant.headers)
    assert conflict.status == 409


async def test_a_completed_prediction_sends_a_signed_webhook(api, tenant, aiohttp_server, job_worker):
    receiver = Receiver()
    url = await webhook_receiver.serve(aiohttp_server, receiver)
    secret = (await (await api.get("/v1/webhooks/secret", headers=tenant.headers)).json())["key"]
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    body = {
        "model": name,
        "webhook": url,
        "webhook_events_filter": ["completed"],
        **json_request(np.ones((1, 4), dtype=np.float32)),
    }
    prediction = await (await predict(api, tenant, body, {"Prefer": "wait=30"})).json()
    assert prediction["status"] == "succeeded"
    await eventually_async(lambda: receiver.requests, 10, "the webhook to arrive")
    headers, raw = receiver.requests[0]
    delivered = Webhook(secret).verify(raw, headers)
    assert delivered["event"] == "completed" and delivered["id"] == prediction["id"]
    assert delivered["output"] == prediction["output"]
