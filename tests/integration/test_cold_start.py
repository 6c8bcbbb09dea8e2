"""Cold starts through the real API and a real model server: a deployment scaled to zero is not ready
(and a readiness probe loads nothing), its first request is held while a replica loads and then
succeeds, a burst of 32 concurrent requests is served in batches after exactly one load, a request past
``cold_start_timeout_ms`` gets 503 with Retry-After (gRPC: UNAVAILABLE), an asynchronous prediction
waits the same way (but fails at once, with the reason, once every load of it failed), and requests
sent right after a first deploy wait for it instead of getting 503.

A deployment gets to zero as a user's would: ``min_replicas`` 0 and ``idle_timeout_s`` 1, so the
replica the PUT starts unloads a second after it became ready with no traffic.
"""

from __future__ import annotations

import asyncio
import secrets

import grpc
import numpy as np
import pytest
from sqlalchemy import func, select

from api.grpc_server import GRPC_ENDPOINT
from api.inference_router import ROUTER
from api.oip_grpc import open_inference_grpc_pb2 as pb
from api.oip_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from core.artifact_store import ArtifactStore
from core.models import Artifact, Deployment, Model, ModelReplica, Prediction, ServingEvent
from tests.support.api import deploy, infer, json_request, register_version, wait_ready
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS, linear_classifier, linear_expected

pytestmark = pytest.mark.usefixtures("model_server")

WAIT_S = 90.0


def auth(tenant) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {tenant.key}"),)


def replica_rows(db, version_id: str) -> int:
    with db() as session:
        return session.scalar(
            select(func.count()).select_from(ModelReplica).where(ModelReplica.model_version_id == version_id)
        )


def serving_events(db, version_id: str, action: str) -> int:
    with db() as session:
        return session.scalar(
            select(func.count())
            .select_from(ServingEvent)
            .where(ServingEvent.model_version_id == version_id, ServingEvent.action == action)
        )


async def deployed_at_zero(api, tenant, db, **settings: int) -> tuple[str, str]:
    """A new model deployed with ``min_replicas`` 0 whose first replica loaded and then unloaded for want of
    traffic; (its name, its version id) once the API's table shows no replica."""
    name = f"cold-{secrets.token_hex(3)}"
    version = await register_version(api, tenant, name, LINEAR_MODELS[0])
    await deploy(api, tenant, name, 1, min_replicas=0, idle_timeout_s=1, **settings)
    await wait_ready(api, tenant, name, 1)  # the replica the PUT starts

    async def at_zero() -> bool:
        route = api.app[ROUTER].table.models.get((tenant.id, name))
        served = route.versions.get(1) if route else None
        return (
            served is not None and not served.replicas and await asyncio.to_thread(replica_rows, db, version["id"]) == 0
        )

    await eventually_async(at_zero, WAIT_S, f"{name} to scale to zero")
    return name, version["id"]


def demand_at(db, name: str, tenant_id: str):
    with db() as session:
        return session.scalar(
            select(Deployment.demand_at)
            .join(Model, Model.id == Deployment.model_id)
            .where(Model.tenant_id == tenant_id, Model.name == name)
        )


async def test_at_zero_readiness_probes_load_nothing_and_the_first_request_waits_for_a_load_and_succeeds(
    api, tenant, db
):
    name, version_id = await deployed_at_zero(api, tenant, db)
    assigned = serving_events(db, version_id, "assign")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.app[GRPC_ENDPOINT].port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for _ in range(4):
            for path in (f"/v2/models/{name}/ready", f"/v2/models/{name}/versions/1/ready"):
                answer = await api.get(path, headers=tenant.headers)
                assert answer.status == 503, await answer.text()
            ready = await stub.ModelReady(pb.ModelReadyRequest(name=name), metadata=auth(tenant))
            assert not ready.ready
            await asyncio.sleep(0.4)
    assert demand_at(db, name, tenant.id) is None
    assert replica_rows(db, version_id) == 0 and serving_events(db, version_id, "assign") == assigned

    x = np.random.default_rng(3).normal(size=(2, 4)).astype(np.float32)
    answer = await infer(api, tenant, name, json_request(x))
    assert answer.status == 200, await answer.text()
    outputs = {o["name"]: o for o in (await answer.json())["outputs"]}
    np.testing.assert_allclose(
        np.array(outputs["scores"]["data"]).reshape(2, 3), linear_expected(x)["scores"], rtol=1e-5
    )
    assert serving_events(db, version_id, "assign") == assigned + 1
    assert (await api.get(f"/v2/models/{name}/ready", headers=tenant.headers)).status == 200

    metrics = await (await api.get("/metrics")).text()
    count = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith('maas_cold_start_seconds_count{transport="http"}')
    )
    assert count >= 1  # how long it took is bench/serverless.py's business


async def test_32_concurrent_requests_at_zero_are_all_served_in_batches_after_one_load(api, tenant, db):
    name, version_id = await deployed_at_zero(api, tenant, db, max_batch_size=32, max_queue_delay_us=20_000)
    loads = serving_events(db, version_id, "loaded")
    x = np.ones((1, 4), np.float32)
    answers = await asyncio.gather(*(infer(api, tenant, name, json_request(x * i)) for i in range(32)))
    assert [a.status for a in answers] == [200] * 32, [await a.text() for a in answers if a.status != 200]
    for i, answer in enumerate(answers):
        scores = (await answer.json())["outputs"][0]
        np.testing.assert_allclose(np.array(scores["data"]).reshape(1, 3), linear_expected(x * i)["scores"], rtol=1e-5)

    async def recorded() -> list[Prediction]:
        def rows() -> list[Prediction]:
            with db() as session:
                return list(session.scalars(select(Prediction).where(Prediction.model_version_id == version_id)))

        found = await asyncio.to_thread(rows)
        return found if len([p for p in found if p.status == "succeeded"]) >= 32 else []

    rows = [p for p in await eventually_async(recorded, WAIT_S, "32 recorded predictions") if p.status == "succeeded"]
    batches = {p.batch_id for p in rows[-32:]}
    assert len(batches) < 32 and max(p.batch_size or 0 for p in rows[-32:]) > 1, batches
    assert serving_events(db, version_id, "loaded") == loads + 1  # one load for the whole burst


async def test_past_its_cold_start_timeout_a_request_gets_503_with_retry_after_and_grpc_unavailable(api, tenant, db):
    # 1 ms: no load can be ready in time, so the request is held, looked at once more, and refused
    name, _ = await deployed_at_zero(api, tenant, db, cold_start_timeout_ms=1)
    x = np.ones((1, 4), np.float32)
    request = pb.ModelInferRequest(model_name=name)
    request.inputs.add(name="x", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.app[GRPC_ENDPOINT].port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        # side by side, so both arrive while the load their demand started is still running
        over_grpc, answer = await asyncio.gather(
            stub.ModelInfer(request, metadata=auth(tenant)),
            infer(api, tenant, name, json_request(x)),
            return_exceptions=True,
        )
    assert isinstance(over_grpc, grpc.aio.AioRpcError), over_grpc
    assert over_grpc.code() == grpc.StatusCode.UNAVAILABLE and "cold_start_timeout_ms" in over_grpc.details()
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"
    assert "cold_start_timeout_ms (1 ms)" in (await answer.json())["error"]
    # the demand it signalled still loads a replica: a later request is served
    await wait_ready(api, tenant, name, 1)
    assert (await infer(api, tenant, name, json_request(np.ones((1, 4), np.float32)))).status == 200


@pytest.mark.usefixtures("inference_worker")
async def test_an_asynchronous_prediction_at_zero_waits_for_the_load(api, tenant, db):
    name, _ = await deployed_at_zero(api, tenant, db)
    x = np.ones((2, 4), np.float32)
    created = await api.post(
        "/v1/predictions", json={"model": name, **json_request(x)}, headers={**tenant.headers, "Prefer": "wait=60"}
    )
    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["status"] == "succeeded", body
    scores = next(o for o in body["output"]["outputs"] if o["name"] == "scores")
    np.testing.assert_allclose(np.array(scores["data"]).reshape(2, 3), linear_expected(x)["scores"], rtol=1e-5)


@pytest.mark.usefixtures("inference_worker")
async def test_a_prediction_for_a_deployment_whose_load_failed_fails_with_the_reason_instead_of_waiting(
    api, tenant, settings, db
):
    name = f"cold-{secrets.token_hex(3)}"
    rng = np.random.default_rng()  # bytes of its own: no model server's cache (keyed by sha256) holds them
    version = await register_version(api, tenant, name, linear_classifier(rng.normal(size=(4, 3)), rng.normal(size=3)))
    with db() as session:
        key = session.scalar(select(Artifact.storage_key).where(Artifact.id == version["artifact"]["id"]))
    # other bytes behind the registered version: every load of it fails its sha256 check
    await asyncio.to_thread(ArtifactStore(settings).upload_chunks, key, [LINEAR_MODELS[1]])
    # a budget far past the answer's wait: only failing at once ends the prediction within it
    await deploy(api, tenant, name, 1, min_replicas=0, cold_start_timeout_ms=600_000)
    x = np.ones((1, 4), np.float32)
    created = await api.post(
        "/v1/predictions", json={"model": name, **json_request(x)}, headers={**tenant.headers, "Prefer": "wait=30"}
    )
    assert created.status == 201, await created.text()
    body = await created.json()
    assert body["status"] == "failed", body
    assert body["error"]["code"] == "load_failed" and "sha256" in body["error"]["message"], body["error"]

    answer = await infer(api, tenant, name, json_request(x))  # the table knows by now: refused at once
    assert answer.status == 503 and "sha256" in (await answer.json())["error"]


async def test_requests_sent_right_after_a_first_deploy_wait_for_it_instead_of_503(api, tenant):
    # before cold starts, every request between the PUT and the first ready replica was refused with 503
    name = f"cold-{secrets.token_hex(3)}"
    await register_version(api, tenant, name, LINEAR_MODELS[0])
    await deploy(api, tenant, name, 1)  # not waiting: the table may not even know the deployment yet
    x = np.ones((1, 4), np.float32)
    answers = await asyncio.gather(*(infer(api, tenant, name, json_request(x)) for _ in range(8)))
    assert [a.status for a in answers] == [200] * 8, [await a.text() for a in answers if a.status != 200]
