"""Usage metering end to end: a known workload (inference over REST and gRPC on a real model server, a
job of known duration on a real worker, an upload and its download), then ``GET /v1/usage`` reports
the counts exactly and the seconds within 10% of what the platform itself recorded (the model
server's ``inference_ms`` and ``batch_size`` per request, the job's ``started_at``/``finished_at``).
Also the unit rules of ``core.usage`` (the batch time shared out over its rows; counters merged)."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from sqlalchemy import func, select

from api.context import CONTEXT
from api.grpc_server import GRPC_ENDPOINT
from api.oip_grpc import open_inference_grpc_pb2 as pb
from api.oip_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from core import usage
from core.models import Artifact, File, Job, Prediction, UsageHour
from tests.support.api import deployed_model, infer, json_request, upload_raw
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS

CSV = b"a,b\n1,2\n3,4\n5,6\n"


def test_a_request_is_charged_its_share_of_its_batch():
    assert usage.inference_seconds(10.0, 2, 8) == pytest.approx(0.0025)
    assert usage.inference_seconds(10.0, 3, None) == pytest.approx(0.010)  # alone in its batch
    assert usage.inference_seconds(None, 3, 3) == 0.0
    counters = usage.UsageCounters()
    at = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    counters.inference("ten_a", "mv_1", "http", 2, 10.0, 4, at)
    counters.inference("ten_a", "mv_1", "http", 2, 10.0, 4, at + timedelta(minutes=20))
    rows = {r["metric"]: r for r in counters.take()}
    assert rows["inference_requests"]["value"] == 2 and rows["inference_items"]["value"] == 4
    assert rows["inference_seconds"]["value"] == pytest.approx(0.010)
    assert rows["inference_items"]["hour"] == datetime(2026, 1, 1, 10, tzinfo=UTC)
    assert len(counters) == 0


async def _usage(api, tenant, group_by: str) -> dict:
    response = await api.get("/v1/usage", params={"group_by": group_by}, headers=tenant.headers)
    assert response.status == 200, await response.text()
    return await response.json()


@pytest.mark.usefixtures("model_server", "job_worker")
async def test_usage_reports_a_known_workload(api, db, tenant, other_tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0], prefix="usage")
    rows_sent = [1, 4, 5]
    for rows in rows_sent:
        x = np.random.default_rng(rows).normal(size=(rows, 4)).astype(np.float32)
        assert (await infer(api, tenant, name, json_request(x))).status == 200
    x = np.ones((2, 4), np.float32)
    request = pb.ModelInferRequest(model_name=name)
    tensor = request.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    tensor.contents.fp32_contents.extend(x.ravel().tolist())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{api.server.app[GRPC_ENDPOINT].port}") as channel:
        await pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=(("authorization", f"Bearer {tenant.key}"),)
        )
    assert (await infer(api, other_tenant, name, json_request(x))).status == 404  # not the other's model

    job = await api.post(
        "/v1/jobs",
        json={"type": "test.sleep", "spec": {"seconds": 2.0, "steps": 2}},
        headers={**tenant.headers, "Prefer": "wait=60"},
    )
    job_id = (await job.json())["id"]

    async def finished() -> bool:
        with db() as session:
            return session.scalar(select(Job.status).where(Job.id == job_id)) == "succeeded"

    await eventually_async(finished, 90, "the sleep job to succeed")

    file_id = (await (await upload_raw(api, tenant, CSV, f"u-{secrets.token_hex(3)}.csv")).json())["id"]
    download = await api.get(f"/v1/files/{file_id}/content", headers=tenant.headers, allow_redirects=False)
    assert download.status == 302

    meter = api.server.app[CONTEXT].usage

    async def job_metered() -> bool:  # the worker writes its row once the job's attempt is over
        with db() as session:
            metric = usage.JOB_SECONDS
            found = select(UsageHour).where(UsageHour.tenant_id == tenant.id, UsageHour.metric == metric)
            return session.scalar(found) is not None

    await eventually_async(job_metered, 30, "the job's usage row")
    await meter.flush(sample=True)

    def recorded() -> list:
        with db() as session:
            return list(
                session.execute(
                    select(Prediction.inference_ms, Prediction.batch_size)
                    .where(Prediction.tenant_id == tenant.id, Prediction.status == "succeeded")
                    .order_by(Prediction.created_at)
                ).all()
            )

    await eventually_async(lambda: len(recorded()) == 4, 10, "the four requests recorded")
    predictions = recorded()
    with db() as session:
        started, ended = session.execute(select(Job.started_at, Job.finished_at).where(Job.id == job_id)).one()
        stored = session.scalar(select(func.sum(File.bytes)).where(File.tenant_id == tenant.id)) or 0
        stored += session.scalar(
            select(func.coalesce(func.sum(Artifact.bytes), 0)).where(Artifact.tenant_id == tenant.id)
        )
    items = [*rows_sent, 2]

    by_model = await _usage(api, tenant, "model")
    assert [(row["group"]["model"], row["group"]["version"]) for row in by_model["data"]] == [(name, 1)]
    model_row = by_model["data"][0]
    assert model_row["inference_requests"] == 4
    assert model_row["inference_items"] == sum(items)
    # the seconds the model server reported, each request charged rows / batch_size of its batch
    wanted = sum(
        ms / 1000 * rows / max(batch or rows, rows) for (ms, batch), rows in zip(predictions, items, strict=True)
    )
    assert model_row["inference_seconds"] == pytest.approx(wanted, rel=0.10, abs=0.002)

    by_type = await _usage(api, tenant, "job_type")
    assert [row["group"] for row in by_type["data"]] == [{"job_type": "test.sleep"}]
    assert by_type["data"][0]["job_seconds"] == pytest.approx((ended - started).total_seconds(), rel=0.10)

    by_day = await _usage(api, tenant, "day")
    assert len(by_day["data"]) >= 1
    total = by_day["total"]
    assert total["inference_requests"] == 4 and total["inference_items"] == sum(items)
    assert total["bytes_downloaded"] == len(CSV)
    assert total["bytes_stored"] == stored
    assert total["job_gpu_seconds"] == 0  # a test.sleep job has no strategy: no ranks, no GPU

    others = await _usage(api, other_tenant, "day")
    assert others["total"]["inference_requests"] == 0 and others["data"] in ([], others["data"])


async def test_a_usage_range_is_checked(api, tenant):
    backwards = await api.get(
        "/v1/usage", params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, headers=tenant.headers
    )
    assert backwards.status == 400
    assert "from" in (await backwards.json())["detail"]
    grouped = await api.get("/v1/usage", params={"group_by": "week"}, headers=tenant.headers)
    assert grouped.status == 400 and "group_by" in (await grouped.json())["detail"]


@pytest.mark.usefixtures("model_server", "inference_worker")
async def test_an_asynchronous_prediction_is_metered_when_it_ends(api, db, tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0], prefix="usage-async")
    x = np.ones((3, 4), np.float32)
    created = await api.post(
        "/v1/predictions", json={"model": name, **json_request(x)}, headers={**tenant.headers, "Prefer": "wait=30"}
    )
    assert created.status == 201, await created.text()
    prediction = await created.json()
    assert prediction["status"] == "succeeded", prediction

    async def metered() -> dict | None:
        with db() as session:
            found = session.execute(
                select(UsageHour.metric, UsageHour.value).where(
                    UsageHour.tenant_id == tenant.id, UsageHour.transport == "async"
                )
            ).all()
        return dict(found) if found else None

    values = await eventually_async(metered, 10, "the prediction's usage")
    assert values["inference_requests"] == 1 and values["inference_items"] == 3
    share = prediction["metrics"]["inference_ms"] / 1000  # alone or not, its rows' share of its batch
    assert 0 < values["inference_seconds"] <= share + 1e-6
