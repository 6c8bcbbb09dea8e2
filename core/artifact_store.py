"""The artifact store: every object we keep in S3 (uploaded files, checkpoints, ONNX models, reports).

Works against any S3 server (AWS, MinIO, SeaweedFS) through boto3. Uploads are
streamed: data arrives in chunks, is hashed as it passes, and goes out as a
multipart upload in parts of ``s3_multipart_part_bytes``, so no object is ever held
whole in memory. Downloads can verify the sha256 recorded in Postgres.

Synchronous by design (workers, CLI); the API calls it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from core.settings import Settings

READ_CHUNK = 1 << 20


class ChecksumMismatch(RuntimeError):
    """A downloaded object does not have the sha256 recorded for it."""


@dataclass(frozen=True)
class StoredObject:
    key: str
    bytes: int
    sha256: str


def make_s3_client(settings: Settings, *, public: bool = False, timeout_s: float = 30.0):
    """The one S3 client factory. ``public`` signs URLs for the endpoint clients reach."""
    settings.require("s3_endpoint_url")
    endpoint = (settings.s3_public_endpoint_url if public else None) or settings.s3_endpoint_url
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        region_name=settings.s3_region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=min(timeout_s, 5.0),
            read_timeout=timeout_s,
            retries={"max_attempts": 3, "mode": "standard"},
        ),
    )


class MultipartWriter:
    """Writes one object from a sequence of chunks; nothing is visible until ``complete()``.

    Objects smaller than one part go up with a single PUT at ``complete()``; larger
    ones as a multipart upload whose parts are sent as they fill. ``abort()`` leaves
    nothing behind.
    """

    def __init__(self, client, bucket: str, key: str, part_bytes: int, content_type: str):
        self._client, self._bucket, self.key = client, bucket, key
        self._part_bytes, self._content_type = part_bytes, content_type
        self._buffer = bytearray()
        self._sha = hashlib.sha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[dict] = []

    @property
    def bytes_written(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        self._sha.update(chunk)
        self._size += len(chunk)
        self._buffer += chunk
        while len(self._buffer) >= self._part_bytes:
            part = bytes(self._buffer[: self._part_bytes])
            del self._buffer[: self._part_bytes]
            self._send_part(part)

    def _send_part(self, data: bytes) -> None:
        if self._upload_id is None:
            self._upload_id = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=self.key, ContentType=self._content_type
            )["UploadId"]
        number = len(self._parts) + 1
        etag = self._client.upload_part(
            Bucket=self._bucket, Key=self.key, UploadId=self._upload_id, PartNumber=number, Body=data
        )["ETag"]
        self._parts.append({"PartNumber": number, "ETag": etag})

    def complete(self) -> StoredObject:
        if self._upload_id is None:
            self._client.put_object(
                Bucket=self._bucket, Key=self.key, Body=bytes(self._buffer), ContentType=self._content_type
            )
        else:
            if self._buffer:
                self._send_part(bytes(self._buffer))
            self._client.complete_multipart_upload(
                Bucket=self._bucket,
                Key=self.key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
        self._buffer.clear()
        return StoredObject(key=self.key, bytes=self._size, sha256=self._sha.hexdigest())

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self.key, UploadId=self._upload_id)
            self._upload_id = None


class ArtifactStore:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.bucket = settings.s3_bucket
        self._client = make_s3_client(settings)
        self._signer = make_s3_client(settings, public=True)

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise
            self._client.create_bucket(Bucket=self.bucket)

    def ping(self) -> None:
        """Raise when the store or the bucket cannot be reached."""
        self._client.head_bucket(Bucket=self.bucket)

    def writer(self, key: str, content_type: str = "application/octet-stream") -> MultipartWriter:
        return MultipartWriter(self._client, self.bucket, key, self.settings.s3_multipart_part_bytes, content_type)

    def upload_chunks(
        self, key: str, chunks: Iterable[bytes], content_type: str = "application/octet-stream"
    ) -> StoredObject:
        writer = self.writer(key, content_type)
        try:
            for chunk in chunks:
                writer.write(chunk)
            return writer.complete()
        except BaseException:
            writer.abort()
            raise

    def upload_file(self, key: str, path: Path, content_type: str = "application/octet-stream") -> StoredObject:
        with open(path, "rb") as fh:
            return self.upload_chunks(key, iter(lambda: fh.read(READ_CHUNK), b""), content_type)

    def download_file(self, key: str, path: Path, expected_sha256: str | None = None) -> StoredObject:
        """Stream an object to ``path``; with ``expected_sha256``, a mismatch deletes the file and raises."""
        sha, size = hashlib.sha256(), 0
        body = self._client.get_object(Bucket=self.bucket, Key=key)["Body"]
        with open(path, "wb") as fh:
            for chunk in body.iter_chunks(READ_CHUNK):
                sha.update(chunk)
                size += len(chunk)
                fh.write(chunk)
        digest = sha.hexdigest()
        if expected_sha256 is not None and digest != expected_sha256:
            path.unlink(missing_ok=True)
            raise ChecksumMismatch(f"{key}: sha256 {digest} != recorded {expected_sha256}")
        return StoredObject(key=key, bytes=size, sha256=digest)

    def open(self, key: str) -> BinaryIO:
        return self._client.get_object(Bucket=self.bucket, Key=key)["Body"]

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise

    def delete(self, key: str) -> None:
        self._client.delete_object(Bucket=self.bucket, Key=key)

    def presigned_url(self, key: str, *, filename: str | None = None) -> tuple[str, datetime]:
        """A GET URL that expires after ``presigned_url_ttl_s``, and its expiry time."""
        ttl = self.settings.presigned_url_ttl_s
        params = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = f'attachment; filename="{filename}"'
        url = self._signer.generate_presigned_url("get_object", Params=params, ExpiresIn=ttl)
        return url, datetime.now(UTC) + timedelta(seconds=ttl)
