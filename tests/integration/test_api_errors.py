"""Authentication, RFC 9457 problems for every kind of bad request, metrics and the OpenAPI document."""

from __future__ import annotations

import pytest

from api.app import create_app

PROBLEM = "application/problem+json"


async def problem(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body = await response.json()
    assert body["status"] == status
    assert {"type", "title", "detail"} <= set(body)
    return body


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (None, "missing Authorization"),
        ("Basic dXNlcjpwYXNz", "Bearer"),
        ("Bearer ", "Bearer"),
        ("Bearer maas_00000000_not-a-real-key", "unknown API key"),
    ],
)
async def test_requests_without_a_valid_key_are_401(api, header, words):
    headers = {"Authorization": header} if header is not None else {}
    response = await api.get("/v1/files", headers=headers)
    body = await problem(response, 401)
    assert words in body["detail"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_key_lifecycle_create_use_revoke(api, tenant):
    created = await api.post("/v1/api-keys", json={"name": "ci"}, headers=tenant.headers)
    assert created.status == 201
    key = await created.json()
    assert key["key"].startswith(key["prefix"] + "_")
    second = {"Authorization": f"Bearer {key['key']}"}
    assert (await api.get("/v1/files", headers=second)).status == 200

    listed = await (await api.get("/v1/api-keys", headers=tenant.headers)).json()
    assert {k["id"] for k in listed["data"]} == {tenant.key_id, key["id"]}
    assert all("key" not in k for k in listed["data"])  # never shown again
    used = next(k for k in listed["data"] if k["id"] == key["id"])
    assert used["last_used_at"] is not None

    revoked = await api.delete(f"/v1/api-keys/{key['id']}", headers=tenant.headers)
    assert (await revoked.json())["revoked_at"] is not None
    body = await problem(await api.get("/v1/files", headers=second), 401)
    assert "revoked" in body["detail"]
    assert (await api.get("/v1/files", headers=tenant.headers)).status == 200


async def test_another_tenants_key_is_404(api, tenant, other_tenant):
    response = await api.delete(f"/v1/api-keys/{tenant.key_id}", headers=other_tenant.headers)
    await problem(response, 404)
    assert (await api.get("/v1/files", headers=tenant.headers)).status == 200


async def test_malformed_json_is_400(api, tenant):
    response = await api.post(
        "/v1/api-keys", data=b'{"name": "x",', headers={**tenant.headers, "Content-Type": "application/json"}
    )
    body = await problem(response, 400)
    assert "not valid JSON" in body["detail"]


async def test_unknown_and_missing_fields_have_pointers(api, tenant):
    unknown = await api.post("/v1/api-keys", json={"name": "x", "scopes": ["all"]}, headers=tenant.headers)
    body = await problem(unknown, 422)
    assert body["errors"] == [{"pointer": "/scopes", "detail": "Extra inputs are not permitted"}]

    missing = await api.post("/v1/api-keys", json={}, headers=tenant.headers)
    body = await problem(missing, 422)
    assert body["errors"] == [{"pointer": "/name", "detail": "Field required"}]

    wrong_type = await api.post("/v1/api-keys", json=["name"], headers=tenant.headers)
    body = await problem(wrong_type, 422)
    assert body["errors"][0]["pointer"] == ""


async def test_bad_query_parameter_is_400_naming_it(api, tenant):
    response = await api.get("/v1/files", params={"limit": "1000"}, headers=tenant.headers)
    body = await problem(response, 400)
    assert body["errors"][0]["parameter"] == "limit"


async def test_form_body_on_json_route_is_415(api, tenant):
    response = await api.post("/v1/api-keys", data={"name": "x"}, headers=tenant.headers)
    await problem(response, 415)


async def test_unknown_route_is_404_and_wrong_method_is_405(api, tenant):
    await problem(await api.get("/v1/nothing-here", headers=tenant.headers), 404)
    response = await api.patch("/v1/files", headers=tenant.headers)
    body = await problem(response, 405)
    assert set(response.headers["Allow"].split(", ")) == {"GET", "POST"}
    assert "POST" in body["detail"]


async def test_json_body_over_the_limit_is_413(aiohttp_client, settings, tenant):
    client = await aiohttp_client(create_app(settings.model_copy(update={"max_request_body_bytes": 512})))
    response = await client.post("/v1/api-keys", json={"name": "x" * 2000}, headers=tenant.headers)
    await problem(response, 413)


async def test_health_metrics_and_openapi(api, tenant):
    assert (await (await api.get("/healthz")).json()) == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status == 200
    assert set((await ready.json())["checks"]) == {"database", "broker", "store"}

    await api.get("/v1/files", headers=tenant.headers)
    metrics = await (await api.get("/metrics")).text()
    assert 'maas_http_requests_total{method="GET",route="/v1/files",status="200"}' in metrics
    assert "maas_http_request_duration_seconds_bucket" in metrics

    document = await (await api.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.1")
    create_key = document["paths"]["/v1/api-keys"]["post"]
    schema_ref = create_key["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][schema_ref.rsplit("/", 1)[1]]
    assert schema["additionalProperties"] is False and schema["required"] == ["name"]
    assert "422" in create_key["responses"]
    assert set(document["paths"]["/v1/files"]) == {"get", "post"}
    assert document["paths"]["/v1/files/{id}"]["get"]["security"] == [{"apiKey": []}]
