"""The artifact store against a real S3 server: multipart streaming, checksums, abort, presigned expiry."""

from __future__ import annotations

import hashlib
import os
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime

import pytest

from core.artifact_store import ArtifactStore, ChecksumMismatch


@pytest.fixture
def store(settings) -> ArtifactStore:
    return ArtifactStore(settings)


def test_multipart_stream_round_trip_with_checksum(store, settings, tmp_path):
    part = settings.s3_multipart_part_bytes
    chunks = [os.urandom(1 << 20) for _ in range(2 * part // (1 << 20) + 3)]  # 2 parts and a tail
    stored = store.upload_chunks("tests/multipart.bin", iter(chunks))
    data = b"".join(chunks)
    assert stored.bytes == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()

    target = tmp_path / "copy.bin"
    store.download_file("tests/multipart.bin", target, expected_sha256=stored.sha256)
    assert target.read_bytes() == data

    with pytest.raises(ChecksumMismatch):
        store.download_file("tests/multipart.bin", tmp_path / "bad.bin", expected_sha256="0" * 64)
    assert not (tmp_path / "bad.bin").exists()


def test_an_aborted_upload_leaves_nothing(store, settings):
    writer = store.writer("tests/aborted.bin")
    writer.write(os.urandom(settings.s3_multipart_part_bytes + 10))  # one part already sent
    writer.abort()
    assert not store.exists("tests/aborted.bin")
    client = store._client
    uploads = client.list_multipart_uploads(Bucket=store.bucket, Prefix="tests/aborted.bin")
    assert uploads.get("Uploads", []) == []


def test_presigned_urls_expire(settings):
    short = ArtifactStore(settings.model_copy(update={"presigned_url_ttl_s": 2}))
    short.upload_chunks("tests/expiring.txt", [b"hello"])
    url, expires_at = short.presigned_url("tests/expiring.txt", filename="hello.txt")
    with urllib.request.urlopen(url) as response:
        assert response.read() == b"hello"
        assert "hello.txt" in response.headers["Content-Disposition"]
    assert 0 < (expires_at - datetime.now(UTC)).total_seconds() <= 2
    time.sleep(3)
    with pytest.raises(urllib.error.HTTPError) as denied:
        urllib.request.urlopen(url)
    assert denied.value.code == 403
