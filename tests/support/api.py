"""Talking to the API in tests: one helper per thing tests do through HTTP, for the aiohttp
``TestClient`` of the ``api`` fixture (or any client made with ``aiohttp_client``) and a tenant
(anything with ``.headers``, the ``tenant`` fixture's ``Tenant``).

Helpers that only send a request return the response, for tests that check its status;
helpers named for an outcome (``upload``, ``register_version``, ``deploy``, ``run_job``) assert
it happened and return the body. Waiting is done with ``eventually_async``, never a bare sleep.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterable
from typing import Any, Protocol

import aiohttp
import numpy as np
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from tests.support.eventually import eventually_async

TERMINAL = ("succeeded", "failed", "canceled")
READY_TIMEOUT_S = 90.0


class HasHeaders(Protocol):
    @property
    def headers(self) -> dict[str, str]: ...


def _headers(tenant: HasHeaders, idempotency_key: str | None, prefer_wait_s: int | None) -> dict[str, str]:
    headers = dict(tenant.headers)
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    if prefer_wait_s is not None:
        headers["Prefer"] = f"wait={prefer_wait_s}"
    return headers


# ---------------------------------------------------------------- jobs


async def create_job(
    api: TestClient,
    tenant: HasHeaders,
    body: dict[str, Any],
    *,
    idempotency_key: str | None = None,
    prefer_wait_s: int | None = None,
) -> ClientResponse:
    """``POST /v1/jobs``; ``prefer_wait_s`` sends ``Prefer: wait=N`` (the answer waits for the job)."""
    return await api.post("/v1/jobs", json=body, headers=_headers(tenant, idempotency_key, prefer_wait_s))


async def get_job(api: TestClient, tenant: HasHeaders, job_id: str, *, prefer_wait_s: int | None = None) -> dict:
    response = await api.get(f"/v1/jobs/{job_id}", headers=_headers(tenant, None, prefer_wait_s))
    assert response.status == 200, await response.text()
    return await response.json()


async def wait_done(api: TestClient, tenant: HasHeaders, job_id: str, timeout_s: float = 30) -> dict:
    """The job once it is terminal (succeeded, failed or canceled), long-polling with ``Prefer: wait``."""
    last: dict = {}

    async def finished() -> dict | None:
        last.update(await get_job(api, tenant, job_id, prefer_wait_s=5))
        return last if last["status"] in TERMINAL else None

    return await eventually_async(finished, timeout_s, lambda: f"job {job_id} to finish; it is {last.get('status')}")


async def run_job(api: TestClient, tenant: HasHeaders, body: dict[str, Any], timeout_s: float = 30) -> dict:
    """Create a job (asserting 201) and return it once it is terminal, whatever its status."""
    response = await create_job(api, tenant, body)
    assert response.status == 201, await response.text()
    return await wait_done(api, tenant, (await response.json())["id"], timeout_s=timeout_s)


async def cancel_job(api: TestClient, tenant: HasHeaders, job_id: str) -> ClientResponse:
    return await api.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)


async def job_events(api: TestClient, tenant: HasHeaders, job_id: str) -> list[dict]:
    """Every stored event of a job, oldest first (one page of up to 1000)."""
    response = await api.get(f"/v1/jobs/{job_id}/events", params={"limit": "1000"}, headers=tenant.headers)
    return (await response.json())["data"]


async def job_artifacts(api: TestClient, tenant: HasHeaders, job_id: str) -> list[dict]:
    return (await (await api.get(f"/v1/jobs/{job_id}/artifacts", headers=tenant.headers)).json())["data"]


# ---------------------------------------------------------------- files and artifacts


async def upload_raw(
    api: TestClient,
    tenant: HasHeaders,
    data: bytes | AsyncIterable[bytes],
    filename: str,
    purpose: str = "dataset",
) -> ClientResponse:
    """``POST /v1/files`` with the bytes as the body (an async iterable streams them, without a length)."""
    return await api.post(
        "/v1/files",
        params={"purpose": purpose, "filename": filename},
        data=data,
        headers={**tenant.headers, "Content-Type": "application/octet-stream"},
    )


async def upload_multipart(
    api: TestClient,
    tenant: HasHeaders,
    data: bytes,
    filename: str,
    purpose: str = "dataset",
    content_type: str = "application/octet-stream",
) -> ClientResponse:
    """``POST /v1/files`` as a multipart form: a ``purpose`` field, then the ``file``."""
    form = aiohttp.FormData()
    form.add_field("purpose", purpose)
    form.add_field("file", data, filename=filename, content_type=content_type)
    return await api.post("/v1/files", data=form, headers=tenant.headers)


async def upload(api: TestClient, tenant: HasHeaders, data: bytes, filename: str, purpose: str = "dataset") -> str:
    """Upload raw bytes, assert 201, and return the file's id."""
    response = await upload_raw(api, tenant, data, filename, purpose=purpose)
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def download_artifact(api: TestClient, tenant: HasHeaders, artifact_id: str) -> bytes:
    """An artifact's bytes, fetched from its presigned download URL."""
    link = await (await api.get(f"/v1/artifacts/{artifact_id}", headers=tenant.headers)).json()
    async with aiohttp.ClientSession() as plain, plain.get(link["download_url"]) as response:
        assert response.status == 200
        return await response.read()


# ---------------------------------------------------------------- models and serving


async def register_version(api: TestClient, tenant: HasHeaders, name: str, onnx_bytes: bytes) -> dict[str, Any]:
    """Upload an ONNX file and register it as the next version of ``name``; returns the version."""
    file_id = await upload(api, tenant, onnx_bytes, f"{name}.onnx", purpose="model")
    created = await api.post(f"/v1/models/{name}/versions", json={"file_id": file_id}, headers=tenant.headers)
    assert created.status == 201, await created.text()
    return await created.json()


async def deploy(api: TestClient, tenant: HasHeaders, name: str, version: int, **batching: int) -> dict[str, Any]:
    """``PUT /v1/models/{name}/deployment`` (asserting 200), without waiting for it to be ready."""
    response = await api.put(
        f"/v1/models/{name}/deployment", json={"version": version, **batching}, headers=tenant.headers
    )
    assert response.status == 200, await response.text()
    return await response.json()


async def wait_ready(
    api: TestClient, tenant: HasHeaders, name: str, version: int, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Until ``GET /v2/models/{name}/versions/{version}/ready`` answers 200."""

    async def ready() -> bool:
        response = await api.get(f"/v2/models/{name}/versions/{version}/ready", headers=tenant.headers)
        return response.status == 200

    await eventually_async(ready, timeout_s, f"version {version} of {name} to be ready")


async def deploy_ready(api: TestClient, tenant: HasHeaders, name: str, version: int, **batching: int) -> dict[str, Any]:
    """Deploy a version and wait until it serves; returns the deployment as the PUT answered it."""
    deployment = await deploy(api, tenant, name, version, **batching)
    await wait_ready(api, tenant, name, version)
    return deployment


async def deployed_model(
    api: TestClient, tenant: HasHeaders, onnx_bytes: bytes, prefix: str = "lin", **batching: int
) -> str:
    """Register ``onnx_bytes`` as version 1 of a new model named ``{prefix}-<random>``, deploy it and
    wait until it serves; returns the model's name."""
    name = f"{prefix}-{secrets.token_hex(3)}"
    await register_version(api, tenant, name, onnx_bytes)
    await deploy_ready(api, tenant, name, 1, **batching)
    return name


def json_request(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    """An Open Inference Protocol v2 JSON body with ``x`` as the FP32 input named ``x``."""
    return {"inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}], **extra}


async def infer(
    api: TestClient, tenant: HasHeaders, name: str, body: dict[str, Any], version: int | None = None
) -> ClientResponse:
    """``POST /v2/models/{name}[/versions/{version}]/infer`` with a JSON body."""
    path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/infer"
    return await api.post(path, json=body, headers=tenant.headers)
