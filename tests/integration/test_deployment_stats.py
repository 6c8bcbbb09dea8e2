"""``GET /v1/deployments/stats``: a deployment's traffic from the recorded predictions. Real
requests through a real model server show up (counts, failures, latency, batch sizes); rows
of known latencies give the percentiles PostgreSQL's ``percentile_cont`` and numpy agree on,
only the window's synchronous requests are counted, and a tenant sees only its own."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime

import numpy as np

from api.prediction_recorder import prediction_row
from tests.support.api import deploy, deployed_model, infer, json_request, register_version
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS
from tests.support.traffic import BATCHES, LATENCIES_MS, record_traffic


async def stats(api, tenant, **query: int) -> dict:
    response = await api.get("/v1/deployments/stats", params=query, headers=tenant.headers)
    assert response.status == 200, await response.text()
    return await response.json()


def row_of(answer: dict, model: str) -> dict:
    (found,) = [row for row in answer["data"] if row["model"] == model]
    return found


async def test_requests_to_a_deployment_show_as_its_traffic(api, tenant, other_tenant, model_server):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0], prefix="stats")
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    answers = await asyncio.gather(*(infer(api, tenant, name, json_request(x)) for _ in range(12)))
    assert [a.status for a in answers] == [200] * 12
    bad = await infer(api, tenant, name, json_request(np.zeros((2, 7), np.float32)))  # 7 features, not 4
    assert bad.status == 400 or bad.status == 422, await bad.text()

    async def counted() -> dict | None:
        found = row_of(await stats(api, tenant), name)
        return found if found["requests"] == 13 else None

    found = await eventually_async(counted, 30, "the 13 requests to be recorded")
    assert found["version"] == 1 and found["errors"] == 1
    assert found["error_rate"] == round(1 / 13, 4)
    assert found["requests_per_minute"] == round(13 / 5, 3)
    assert 0 < found["latency_p50_ms"] <= found["latency_p99_ms"]
    assert 3 <= found["mean_batch_size"] <= found["max_batch_size"] <= 12 * 3  # rows: 3 a request
    assert (await stats(api, other_tenant))["data"] == []


async def test_the_numbers_are_the_windows_synchronous_requests(api, tenant, db):
    name = f"stats-{secrets.token_hex(3)}"
    version_id = (await register_version(api, tenant, name, LINEAR_MODELS[0]))["id"]
    await deploy(api, tenant, name, 1)  # no model server: the rows below are the traffic
    quiet = f"quiet-{secrets.token_hex(3)}"
    await register_version(api, tenant, quiet, LINEAR_MODELS[0])
    await deploy(api, tenant, quiet, 1)
    queued = prediction_row(tenant_id=tenant.id, model_version_id=version_id, started_at=datetime.now(UTC))
    record_traffic(db, tenant.id, version_id, {**queued, "is_async": True})

    found = row_of(await stats(api, tenant), name)
    assert found["requests"] == 9 and found["errors"] == 1 and found["error_rate"] == round(1 / 9, 4)
    assert found["requests_per_minute"] == round(9 / 5, 3)
    assert found["latency_p50_ms"] == round(float(np.percentile(LATENCIES_MS, 50)), 3)
    assert found["latency_p99_ms"] == round(float(np.percentile(LATENCIES_MS, 99)), 3)
    assert found["mean_batch_size"] == round(float(np.mean(BATCHES)), 3) and found["max_batch_size"] == 8
    assert row_of(await stats(api, tenant), quiet) == {
        "model": quiet,
        "version": 1,
        "requests": 0,
        "requests_per_minute": 0.0,
        "errors": 0,
        "error_rate": None,
        "latency_p50_ms": None,
        "latency_p99_ms": None,
        "mean_batch_size": None,
        "max_batch_size": None,
    }

    longer = row_of(await stats(api, tenant, window_minutes=15), name)  # the 10-minute-old request too
    assert longer["requests"] == 10 and longer["max_batch_size"] == 64


async def test_a_window_out_of_range_is_a_problem_naming_it(api, tenant):
    for value in (0, 1441, "soon"):
        response = await api.get("/v1/deployments/stats", params={"window_minutes": value}, headers=tenant.headers)
        assert response.status in (400, 422), await response.text()
        assert "window_minutes" in await response.text()
    assert (await api.get("/v1/deployments/stats")).status == 401
