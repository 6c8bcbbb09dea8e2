"""Inputs that once made the API answer 500: NUL characters bound for PostgreSQL text, integers past
its ``integer``, multipart part headers that are not ASCII, JSON nested too deep to parse, request
headers that are not UTF-8 or break their rules, a gzip body that is not gzip, and what the OpenAPI
fuzzer found (a query parameter given twice). Each must be a 4xx problem that names what is wrong
(the header, parameter or field), and leave nothing stored."""

from __future__ import annotations

import asyncio
import io
import json
import socket

import numpy as np
import pytest
from sqlalchemy import func, select

from core.models import Prediction
from tests.support.api import create_job

PROBLEM = "application/problem+json"
INT4_MAX = 2**31 - 1


async def problem(response, status: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == PROBLEM
    body = await response.json()
    assert body["status"] == status
    return body


async def listed(api, tenant, resource: str) -> list:
    response = await api.get(f"/v1/{resource}", headers=tenant.headers)
    assert response.status == 200, await response.text()
    return (await response.json())["data"]


def predictions_of(db, tenant) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(Prediction).where(Prediction.tenant_id == tenant.id))


async def test_nul_in_a_query_parameter_is_400_naming_it(api, tenant):
    response = await api.get("/v1/jobs", params={"after": "job_\x00"}, headers=tenant.headers)
    body = await problem(response, 400)
    assert body["errors"] == [{"parameter": "after", "detail": "must not contain NUL characters"}]
    assert "after" in body["detail"]


async def test_nul_in_a_path_parameter_is_400_naming_it(api, tenant):
    response = await api.get("/v1/jobs/job_%00x", headers=tenant.headers)
    body = await problem(response, 400)
    assert body["errors"] == [{"parameter": "id", "detail": "must not contain NUL characters"}]


async def test_nul_in_a_body_string_is_422_and_stores_no_prediction(api, tenant, db):
    body = {"model": "digits\x00", "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}]}
    response = await api.post("/v1/predictions", json=body, headers=tenant.headers)
    problem_body = await problem(response, 422)
    assert problem_body["errors"] == [{"pointer": "/model", "detail": "must not contain NUL characters"}]
    assert predictions_of(db, tenant) == 0


async def test_nul_in_a_nested_job_spec_is_422_and_stores_no_job(api, tenant):
    spec = {"model": {"name": "digits", "version": 1}, "dataset": {"file_id": "file_\x00abc"}}
    response = await create_job(api, tenant, {"type": "batch_inference", "spec": spec})
    body = await problem(response, 422)
    assert body["errors"] == [{"pointer": "/spec/dataset/file_id", "detail": "must not contain NUL characters"}]
    assert await listed(api, tenant, "jobs") == []


async def test_nul_in_a_body_key_is_422_naming_its_object(api, tenant):
    spec = {"model": {"name": "digits"}, "dataset": {"file_id": "file_abc", "x\x00": "y"}}
    response = await create_job(api, tenant, {"type": "batch_inference", "spec": spec})
    body = await problem(response, 422)
    assert body["errors"] == [{"pointer": "/spec/dataset", "detail": "a key must not contain NUL characters"}]
    assert await listed(api, tenant, "jobs") == []


async def test_an_unpaired_surrogate_in_a_body_string_is_422(api, tenant):
    raw = b'{"type": "batch_inference", "spec": {"model": {"name": "m\\ud800"}, "dataset": {"file_id": "f"}}}'
    headers = {**tenant.headers, "Content-Type": "application/json"}
    body = await problem(await api.post("/v1/jobs", data=raw, headers=headers), 422)
    assert body["errors"] == [{"pointer": "/spec/model/name", "detail": "must not contain unpaired surrogates"}]
    assert await listed(api, tenant, "jobs") == []


async def test_a_version_past_int4_is_422_and_stores_no_prediction(api, tenant, db):
    body = {
        "model": "digits",
        "version": 2**40,
        "inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0]}],
    }
    response = await api.post("/v1/predictions", json=body, headers=tenant.headers)
    problem_body = await problem(response, 422)
    assert [e["pointer"] for e in problem_body["errors"]] == ["/version"]
    assert str(INT4_MAX) in problem_body["errors"][0]["detail"]
    assert predictions_of(db, tenant) == 0


@pytest.mark.parametrize(
    ("job", "pointer"),
    [
        (
            {
                "type": "batch_inference",
                "spec": {"model": {"name": "m", "version": 2**40}, "dataset": {"file_id": "f"}},
            },
            "/spec/model/version",
        ),
        (
            {"type": "compression", "spec": {"source": {"model": "m", "version": 2**40}, "passes": [], "eval": {}}},
            "/spec/source/version",
        ),
    ],
)
async def test_a_job_spec_version_past_int4_is_422_and_stores_no_job(api, tenant, job, pointer):
    body = await problem(await create_job(api, tenant, job), 422)
    errors = [e for e in body["errors"] if e["pointer"] == pointer]
    assert errors and str(INT4_MAX) in errors[0]["detail"], body["errors"]
    assert await listed(api, tenant, "jobs") == []


async def test_a_deployment_version_past_int4_is_422(api, tenant):
    response = await api.put("/v1/models/digits/deployment", json={"version": 2**40}, headers=tenant.headers)
    body = await problem(response, 422)
    assert [e["pointer"] for e in body["errors"]] == ["/version"]


async def test_a_path_version_past_int4_is_404(api, tenant):
    response = await api.get(f"/v1/models/digits/versions/{2**40}", headers=tenant.headers)
    await problem(response, 404)
    response = await api.get("/v1/models/digits/versions/\u00b2", headers=tenant.headers)  # "²".isdigit()
    await problem(response, 404)


async def test_the_openapi_document_states_the_int4_range(api):
    document = await (await api.get("/openapi.json")).json()
    prediction = document["components"]["schemas"]["PredictionCreate"]["properties"]["version"]
    assert INT4_MAX in [branch.get("maximum") for branch in prediction.get("anyOf", [prediction])]


@pytest.mark.parametrize(
    "file_headers",
    [
        # a header name that is not ASCII: aiohttp's InvalidHeader
        b'Content-Disposition: form-data; name="file"; filename="d.npz"\r\nX-N\xf6te: yes\r\n',
        # a file name that is not UTF-8: aiohttp keeps surrogates that nothing later can encode
        b'Content-Disposition: form-data; name="file"; filename="d\xff\xfe.npz"\r\n',
    ],
    ids=["header-name", "filename"],
)
async def test_a_non_ascii_multipart_part_header_is_400_and_stores_no_file(api, tenant, file_headers):
    dataset = io.BytesIO()  # a valid one: only the header is wrong
    np.savez(dataset, X=np.zeros((4, 2), np.float32), y=np.zeros(4, np.int64))
    raw = b"".join(
        [
            b"--hostileboundary\r\n",
            b'Content-Disposition: form-data; name="purpose"\r\n\r\n',
            b"dataset\r\n",
            b"--hostileboundary\r\n",
            file_headers,
            b"Content-Type: application/octet-stream\r\n\r\n",
            dataset.getvalue(),
            b"\r\n--hostileboundary--\r\n",
        ]
    )
    headers = {**tenant.headers, "Content-Type": "multipart/form-data; boundary=hostileboundary"}
    response = await api.post("/v1/files", data=raw, headers=headers)
    body = await problem(response, 400)
    assert body["detail"].startswith("malformed multipart body: "), body
    assert await listed(api, tenant, "files") == []


async def test_a_multipart_field_in_an_unknown_charset_is_400(api, tenant):
    raw = (
        b"--b\r\n"
        b'Content-Disposition: form-data; name="purpose"\r\n'
        b"Content-Type: text/plain; charset=\xe9\r\n\r\n"
        b"dataset\r\n"
        b"--b--\r\n"
    )
    headers = {**tenant.headers, "Content-Type": "multipart/form-data; boundary=b"}
    body = await problem(await api.post("/v1/files", data=raw, headers=headers), 400)
    assert body["detail"].startswith("malformed multipart body: "), body
    assert await listed(api, tenant, "files") == []


async def test_json_nested_too_deep_is_400_and_stores_no_job(api, tenant):
    depth = 200_000
    raw = b'{"type": "batch_inference", "spec": {"x": ' + b"[" * depth + b"]" * depth + b"}}"
    headers = {**tenant.headers, "Content-Type": "application/json"}
    response = await api.post("/v1/jobs", data=raw, headers=headers)
    body = await problem(response, 400)
    assert body["detail"] == "the body is not valid JSON: nested too deep"
    assert await listed(api, tenant, "jobs") == []


# --- found by the OpenAPI fuzzer (tests/integration/test_openapi_fuzz.py), and headers -----------


async def test_a_repeated_query_parameter_is_400_naming_it(api, tenant):
    response = await api.get("/v1/files?after=file_a&after=file_b&limit=5", headers=tenant.headers)
    body = await problem(response, 400)
    assert body["errors"] == [{"parameter": "after", "detail": "given more than once; give it once"}]


async def raw_request(port: int, head: list[bytes], body: bytes = b"") -> tuple[int, str, bytes]:
    """Send an HTTP/1.1 request byte for byte (clients refuse to send such headers); the status,
    content type and body of the answer."""
    return await asyncio.to_thread(_raw_request, port, head, body)


def _raw_request(port: int, head: list[bytes], body: bytes) -> tuple[int, str, bytes]:
    lines = [*head, b"Host: 127.0.0.1", b"Connection: close", b"Content-Length: %d" % len(body)]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    header, _, content = answer.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1])
    ctype = next(
        (line.split(b":", 1)[1].strip() for line in header.split(b"\r\n") if line.lower().startswith(b"content-type:")),
        b"",
    )
    return status, ctype.decode(), content


def header_problem(answer: tuple[int, str, bytes], header: str) -> dict:
    status, ctype, content = answer
    assert status == 400, content
    assert ctype.startswith(PROBLEM), ctype
    body = json.loads(content)
    assert [e["header"] for e in body["errors"]] == [header], body
    return body


JOB = json.dumps({"type": "test.unclaimed", "spec": {}}).encode()


@pytest.mark.parametrize(
    "key",
    [b"k" * 256, b"caf\xc3\xa9", b"\xff\xfe", b"two words"],
    ids=["over-long", "non-ascii", "not-utf8", "space"],
)
async def test_a_malformed_idempotency_key_is_400_naming_the_header_and_stores_no_job(api, tenant, key):
    head = [
        b"POST /v1/jobs HTTP/1.1",
        f"Authorization: Bearer {tenant.key}".encode(),
        b"Content-Type: application/json",
    ]
    answer = await raw_request(api.server.port, [*head, b"Idempotency-Key: " + key], JOB)
    body = header_problem(answer, "Idempotency-Key")
    assert "Idempotency-Key" in body["detail"]
    assert await listed(api, tenant, "jobs") == []


@pytest.mark.parametrize("key", [b"a\x00b", b"a\x01b", b"a\x7fb"], ids=["nul", "control", "del"])
async def test_a_control_character_in_a_header_is_400_never_500(api, tenant, key):
    # aiohttp's HTTP parser refuses these in any header before the app runs: a plain-text 400
    head = [
        b"POST /v1/jobs HTTP/1.1",
        f"Authorization: Bearer {tenant.key}".encode(),
        b"Content-Type: application/json",
    ]
    status, _, content = await raw_request(api.server.port, [*head, b"Idempotency-Key: " + key], JOB)
    assert status == 400, content
    assert b"header" in content.lower()
    assert await listed(api, tenant, "jobs") == []


async def test_an_authorization_header_that_is_not_utf8_is_400_naming_it(api):
    answer = await raw_request(api.server.port, [b"GET /v1/jobs HTTP/1.1", b"Authorization: Bearer \xff\xfe"])
    header_problem(answer, "Authorization")


async def test_a_last_event_id_that_is_not_utf8_is_400_naming_it(api, tenant):
    created = await create_job(api, tenant, {"type": "test.unclaimed", "spec": {}})
    assert created.status == 201, await created.text()
    job_id = (await created.json())["id"]
    head = [f"GET /v1/jobs/{job_id}/events HTTP/1.1".encode(), f"Authorization: Bearer {tenant.key}".encode()]
    header_problem(await raw_request(api.server.port, [*head, b"Last-Event-ID: evt_\xff"]), "Last-Event-ID")
    await api.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)


async def test_a_body_that_is_not_the_gzip_it_claims_is_400_and_stores_no_job(api, tenant):
    headers = {**tenant.headers, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    body = await problem(await api.post("/v1/jobs", data=JOB, headers=headers), 400)
    assert body["detail"].startswith("the request body cannot be read: "), body
    assert await listed(api, tenant, "jobs") == []
