"""/metrics names every tenant and model: with MAAS_METRICS_TOKEN set only that bearer token opens it
(never a tenant's API key); without one it answers loopback clients (the test client is one).
/healthz and /readyz stay open and say nothing tenant-specific. The 403 for other clients is
decided by ``metrics_access``, tested in tests/unit/test_metrics_access.py."""

from __future__ import annotations

import pytest

from api.app import create_app
from api.context import CONTEXT

PROBLEM = "application/problem+json"
TOKEN = "s3cret"


@pytest.fixture
async def guarded(aiohttp_client, settings):
    """The API with a metrics token configured."""
    return await aiohttp_client(create_app(settings.model_copy(update={"metrics_token": TOKEN})))


async def refused(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body = await response.json()
    assert body["status"] == status and TOKEN not in body["detail"]
    return body


async def test_with_a_token_configured_only_that_token_opens_metrics(guarded, tenant):
    response = await guarded.get("/metrics")
    body = await refused(response, 401)
    assert "MAAS_METRICS_TOKEN" in body["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")

    await refused(await guarded.get("/metrics", headers=tenant.headers), 401)  # a tenant's API key
    await refused(await guarded.get("/metrics", headers={"Authorization": "Bearer wrong"}), 401)
    await refused(await guarded.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}), 401)

    await guarded.get("/v1/files", headers=tenant.headers)
    response = await guarded.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status == 200
    assert response.content_type.startswith("text/plain")
    assert 'route="/v1/files"' in await response.text()


async def test_without_a_token_loopback_reads_metrics(api, tenant):
    assert api.app[CONTEXT].settings.metrics_token is None
    response = await api.get("/metrics")
    assert response.status == 200
    assert "maas_http_requests_total" in await response.text()
    # an API key neither opens nor changes anything: loopback is what lets it in
    assert (await api.get("/metrics", headers=tenant.headers)).status == 200


async def test_health_and_readiness_stay_open_and_name_no_tenant(guarded, tenant):
    await guarded.get("/v1/files", headers=tenant.headers)  # the tenant is known to this process
    for path in ("/healthz", "/readyz"):
        response = await guarded.get(path)
        assert response.status == 200, await response.text()
        text = await response.text()
        assert tenant.id not in text and "ten_" not in text and tenant.key not in text


async def test_readiness_errors_carry_no_password(aiohttp_client, settings):
    broken = settings.model_copy(
        update={"broker_url": "redis://:hunter22@127.0.0.1:1/0", "s3_endpoint_url": "http://127.0.0.1:1"}
    )
    client = await aiohttp_client(create_app(broken))
    response = await client.get("/readyz")
    assert response.status == 503
    body = await response.json()
    assert body["checks"]["broker"]["ok"] is False and body["checks"]["broker"]["error"]
    assert "hunter22" not in await response.text()
