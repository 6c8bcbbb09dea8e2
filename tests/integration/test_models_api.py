"""The model registry: versions from uploaded ONNX files, signature read from the graph, isolation."""

from __future__ import annotations

import onnx
import pytest

from tests.support.api import upload_raw
from tests.support.onnx_models import tiny_onnx


@pytest.fixture
async def onnx_file(api, tenant) -> dict:
    response = await upload_raw(api, tenant, tiny_onnx(), "tiny.onnx", purpose="model")
    assert response.status == 201, await response.text()
    return await response.json()


async def test_versions_are_numbered_and_carry_the_signature(api, tenant, onnx_file):
    first = await api.post(
        "/v1/models/tiny/versions", json={"file_id": onnx_file["id"], "metrics": {"acc": 0.5}}, headers=tenant.headers
    )
    assert first.status == 201, await first.text()
    second = await api.post("/v1/models/tiny/versions", json={"file_id": onnx_file["id"]}, headers=tenant.headers)
    v1, v2 = await first.json(), await second.json()
    assert (v1["version"], v2["version"]) == (1, 2)
    assert v1["sha256"] == onnx_file["sha256"] == v1["artifact"]["sha256"]
    assert v1["signature"] == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert v1["lineage"]["source"]["file_id"] == onnx_file["id"]

    listed = await (await api.get("/v1/models", headers=tenant.headers)).json()
    assert [(m["name"], m["latest_version"]) for m in listed["data"]] == [("tiny", 2)]
    versions = await (await api.get("/v1/models/tiny/versions", headers=tenant.headers)).json()
    assert [v["version"] for v in versions["data"]] == [1, 2]
    got = await (await api.get("/v1/models/tiny/versions/1", headers=tenant.headers)).json()
    assert got["metrics"] == {"acc": 0.5}

    download = await (await api.get(f"/v1/artifacts/{v1['artifact']['id']}", headers=tenant.headers)).json()
    assert download["download_url"].startswith("http")
    assert onnx.load_from_string(tiny_onnx()).graph.name == "tiny"


async def test_registry_is_per_tenant(api, tenant, other_tenant, onnx_file):
    await api.post("/v1/models/tiny/versions", json={"file_id": onnx_file["id"]}, headers=tenant.headers)
    for path in ("/v1/models/tiny/versions", "/v1/models/tiny/versions/1"):
        assert (await api.get(path, headers=other_tenant.headers)).status == 404
    stolen = await api.post("/v1/models/tiny/versions", json={"file_id": onnx_file["id"]}, headers=other_tenant.headers)
    assert stolen.status == 422
    assert (await stolen.json())["errors"] == [{"pointer": "/file_id", "detail": "no such file"}]


async def test_bad_registrations_are_422(api, tenant):
    csv = await (await upload_raw(api, tenant, b"a,b\n1,2\n", "d.csv")).json()
    not_onnx = await api.post("/v1/models/m/versions", json={"file_id": csv["id"]}, headers=tenant.headers)
    assert not_onnx.status == 422 and "onnx" in (await not_onnx.json())["detail"]
    bad_name = await api.post("/v1/models/Bad Name!/versions", json={"file_id": csv["id"]}, headers=tenant.headers)
    assert bad_name.status == 422
    assert (await api.get("/v1/models/m/versions/1", headers=tenant.headers)).status == 404
