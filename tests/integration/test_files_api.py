"""POST/GET /v1/files against real PostgreSQL and S3: streaming, checksums, validation, isolation."""

from __future__ import annotations

import hashlib
import io

import aiohttp
import numpy as np
import pytest
from sklearn.datasets import load_digits
from sqlalchemy import func, select

from api.app import create_app
from core.artifact_store import make_s3_client
from core.models import File
from tests.support.api import upload_multipart, upload_raw

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def digits_npz() -> bytes:
    digits = load_digits()
    buffer = io.BytesIO()
    np.savez(buffer, X=digits.data.astype(np.float32), y=digits.target.astype(np.int64))
    return buffer.getvalue()


def stored_state(settings, db, tenant_id: str) -> tuple[int, list[str], int]:
    """(file rows, S3 keys, unfinished multipart uploads) of one tenant."""
    client = make_s3_client(settings)
    prefix = f"files/{tenant_id}/"
    listing = client.list_objects_v2(Bucket=settings.s3_bucket, Prefix=prefix)
    uploads = client.list_multipart_uploads(Bucket=settings.s3_bucket, Prefix=prefix)
    with db() as session:
        rows = session.scalar(select(func.count()).select_from(File).where(File.tenant_id == tenant_id))
    return rows, [o["Key"] for o in listing.get("Contents", [])], len(uploads.get("Uploads", []))


async def test_raw_upload_records_sha256_and_downloads_same_bytes(api, tenant, digits_npz):
    response = await upload_raw(api, tenant, digits_npz, "digits.npz")
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["id"].startswith("file_")
    assert body["sha256"] == hashlib.sha256(digits_npz).hexdigest()
    assert body["bytes"] == len(digits_npz)
    assert body["purpose"] == "dataset" and body["format"] == "npz"
    assert body["details"]["arrays"]["X"] == {"dtype": "float32", "shape": [1797, 64]}

    got = await api.get(f"/v1/files/{body['id']}", headers=tenant.headers)
    assert got.status == 200
    assert (await got.json())["sha256"] == body["sha256"]

    redirect = await api.get(f"/v1/files/{body['id']}/content", headers=tenant.headers, allow_redirects=False)
    assert redirect.status == 302
    async with aiohttp.ClientSession() as plain, plain.get(redirect.headers["Location"]) as download:
        assert download.status == 200
        assert await download.read() == digits_npz


async def test_multipart_upload_of_csv(api, tenant):
    csv = b"a,b,label\n1,2,x\n3,4,y\n"
    response = await upload_multipart(api, tenant, csv, "small.csv", content_type="text/csv")
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["filename"] == "small.csv"
    assert body["details"] == {"columns": ["a", "b", "label"], "rows": 2, "uncompressed_bytes": 2 * 3 * 8}
    assert body["sha256"] == hashlib.sha256(csv).hexdigest()


async def test_chunked_upload_larger_than_one_part_is_streamed(api, tenant, settings, db):
    rows = 5 * settings.s3_multipart_part_bytes // 40 // 8 // 2 + 1000  # a little over 2.5 parts
    array = np.arange(rows * 40, dtype=np.float64).reshape(rows, 40)
    buffer = io.BytesIO()
    np.savez(buffer, X=array, y=np.zeros(rows, dtype=np.int64))
    data = buffer.getvalue()
    assert len(data) > 2 * settings.s3_multipart_part_bytes

    async def chunks():
        for start in range(0, len(data), 256 * 1024):
            yield data[start : start + 256 * 1024]

    response = await upload_raw(api, tenant, chunks(), "big.npz")
    assert response.status == 201, await response.text()
    body = await response.json()
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert stored_state(settings, db, tenant.id) == (1, [f"files/{tenant.id}/{body['id']}"], 0)


@pytest.mark.parametrize(
    ("filename", "data", "purpose", "pointer", "words"),
    [
        ("broken.npz", b"this is not a zip archive at all", "dataset", "/file", "zip"),
        ("ragged.csv", b"a,b,c\n1,2,3\n4,5\n", "dataset", "/file", "line 3"),
        ("model.onnx", b"\x08\x07garbage that is not a protobuf model", "model", "/file", "onnx"),
        ("weights.pt", b"anything", "model", "/filename", ".onnx"),
        ("data.npz", b"anything", "checkpoint", "/purpose", "dataset"),
    ],
)
async def test_invalid_files_are_422_and_leave_nothing(
    api, tenant, settings, db, filename, data, purpose, pointer, words
):
    response = await upload_raw(api, tenant, data, filename, purpose)
    assert response.status == 422
    assert response.content_type == PROBLEM
    problem = await response.json()
    assert problem["status"] == 422
    assert problem["errors"][0]["pointer"] == pointer
    assert words.lower() in problem["detail"].lower()
    assert stored_state(settings, db, tenant.id) == (0, [], 0)


async def test_upload_without_purpose_names_the_field(api, tenant):
    response = await api.post(
        "/v1/files",
        params={"filename": "x.csv"},
        data=b"a\n1\n",
        headers={**tenant.headers, "Content-Type": "application/octet-stream"},
    )
    assert response.status == 422
    assert (await response.json())["errors"] == [{"pointer": "/purpose", "detail": "purpose is required"}]


async def test_upload_over_the_limit_is_413_and_leaves_nothing(aiohttp_client, settings, db, tenant):
    small = await aiohttp_client(create_app(settings.model_copy(update={"max_upload_bytes": 1000})))
    declared = await upload_raw(small, tenant, b"a,b\n" + b"1,2\n" * 400, "big.csv")
    assert declared.status == 413
    assert declared.content_type == PROBLEM

    async def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(400):
            yield b"1,2\n"

    streamed = await upload_raw(small, tenant, chunks(), "big.csv")
    assert streamed.status == 413
    assert "1000 bytes" in (await streamed.json())["detail"]
    assert stored_state(settings, db, tenant.id) == (0, [], 0)


async def test_dataset_over_the_uncompressed_limit_is_422_and_leaves_nothing(aiohttp_client, settings, db, tenant):
    small = await aiohttp_client(create_app(settings.model_copy(update={"max_dataset_bytes": 1_000_000})))
    buffer = io.BytesIO()  # a few kB that inflate to 16 MB
    np.savez_compressed(buffer, X=np.zeros((2000, 2000), np.float32), y=np.zeros(2000, np.int64))
    assert len(buffer.getvalue()) < 100_000
    response = await upload_raw(small, tenant, buffer.getvalue(), "bomb.npz")
    assert response.status == 422
    assert response.content_type == PROBLEM
    assert (await response.json())["errors"] == [
        {
            "pointer": "/file",
            "detail": "the arrays take 16.0 MB uncompressed, over the 1.0 MB limit (MAAS_MAX_DATASET_BYTES)",
        }
    ]
    assert stored_state(settings, db, tenant.id) == (0, [], 0)
    listed = await small.get("/v1/files", headers=tenant.headers)
    assert (await listed.json())["data"] == []

    fits = await upload_raw(small, tenant, b"a,b,label\n" + b"1,2,0\n" * 100, "fits.csv")
    assert fits.status == 201, await fits.text()
    assert (await fits.json())["details"]["uncompressed_bytes"] == 100 * 3 * 8


async def test_other_tenants_file_is_404(api, tenant, other_tenant):
    response = await upload_raw(api, tenant, b"a,b\n1,2\n", "mine.csv")
    file_id = (await response.json())["id"]
    for path in (f"/v1/files/{file_id}", f"/v1/files/{file_id}/content"):
        other = await api.get(path, headers=other_tenant.headers, allow_redirects=False)
        assert other.status == 404
        assert other.content_type == PROBLEM
    listing = await (await api.get("/v1/files", headers=other_tenant.headers)).json()
    assert listing["data"] == []


async def test_list_files_in_cursor_pages(api, tenant):
    ids = []
    for i in range(5):
        response = await upload_raw(api, tenant, f"a\n{i}\n".encode(), f"f{i}.csv")
        ids.append((await response.json())["id"])
    seen, cursor = [], None
    while True:
        params = {"limit": "2"} | ({"after": cursor} if cursor else {})
        page = await (await api.get("/v1/files", params=params, headers=tenant.headers)).json()
        seen += [item["id"] for item in page["data"]]
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        cursor = page["next_cursor"]
    assert seen == list(reversed(ids))
