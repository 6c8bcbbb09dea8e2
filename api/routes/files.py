"""The files resource: datasets and models coming in.

``POST /v1/files`` takes a raw body (``?purpose=&filename=``) or multipart form
(``purpose`` field, ``file`` part). The bytes are streamed twice at once: to S3 as
a multipart upload that is not completed yet, and to a temporary file on disk that
the validator reads. Only a file that validates is completed in S3 and recorded
in Postgres; anything else aborts the upload, so a rejected file leaves nothing.

``DELETE /v1/files/{id}`` removes the row, then the object (kept while a model version registered
from the file still uses it); 409 while a queued or running job's spec names the file.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from pydantic import ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.context import ApiContext, context
from api.deleting import run_delete
from api.endpoints import Call, Endpoints
from api.pagination import Page, PageQuery, make_page, page_statement
from api.problems import Problem, not_found, quota_problem, validation_problem
from core import quotas
from core.artifact_store import MultipartWriter
from core.deletion import delete_file as delete_file_rows
from core.file_validation import FORMATS_BY_PURPOSE, InvalidFile, detect_format, validate_file
from core.ids import new_id
from core.models import File
from core.objects import DeletedFile, FileObject
from core.settings import Settings
from core.spec_kit import StrictModel

files = Endpoints("files")

SINK_CHUNK = 1 << 20


class UploadQuery(StrictModel):
    # a raw body needs both; a multipart form may carry them instead (its `purpose` field, its `file`
    # part's filename), which the document cannot say of query parameters: it states the raw body's rule
    model_config = ConfigDict(json_schema_extra={"required": ["purpose", "filename"]})
    purpose: str | None = Field(
        default=None,
        # the enum upload validation checks (422 naming /purpose otherwise, as for a multipart field)
        json_schema_extra={"enum": list(FORMATS_BY_PURPOSE)},
        description="`dataset` or `model`; a multipart form may give it as its `purpose` field instead",
    )
    filename: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description="its name, whose extension says its format; a multipart form may give it as the `file` part's "
        "filename instead",
    )


class FileListQuery(PageQuery):
    purpose: str | None = Field(default=None, description="only files of this purpose: dataset or model")


UPLOAD_DOC = {
    "required": True,
    "description": (
        "The file, as a raw body (Content-Type application/octet-stream, with ?purpose=&filename=) "
        "or as multipart/form-data with a `purpose` field and a `file` part. Accepted: "
        + "; ".join(f"{p}: {', '.join('.' + f for f in fmts)}" for p, fmts in FORMATS_BY_PURPOSE.items())
    ),
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {
                    "purpose": {"type": "string", "enum": list(FORMATS_BY_PURPOSE)},
                    "file": {"type": "string", "format": "binary"},
                },
                "required": ["purpose", "file"],
            }
        },
    },
}


def clean_filename(raw: str | None) -> str:
    """The last path component, without control characters or quotes; 422 when nothing is left."""
    name = re.sub(r'[\x00-\x1f\x7f"\\]', "", os.path.basename((raw or "").replace("\\", "/"))).strip()
    if not name or name in (".", ".."):
        raise validation_problem([{"pointer": "/filename", "detail": "a file name is required"}])
    return name[:255]


class _Upload:
    """One upload in flight: the S3 writer, the temp file and the byte limit."""

    def __init__(self, ctx: ApiContext, key: str, tmp_dir: str):
        self.ctx = ctx
        self.limit = ctx.settings.max_upload_bytes  # or the tenant's lower upload_bytes quota (create_file)
        self.writer: MultipartWriter = ctx.store.writer(key)
        self.path = Path(tmp_dir) / "upload"
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed in finish()/abort()
        self._pending = bytearray()

    def _sink(self, data: bytes) -> None:
        self._fh.write(data)
        self.writer.write(data)

    async def feed(self, chunks: AsyncIterator[bytes]) -> None:
        async for chunk in chunks:
            if self.writer.bytes_written + len(self._pending) + len(chunk) > self.limit:
                raise _too_large(self.ctx, self.limit, self.writer.bytes_written + len(self._pending) + len(chunk))
            self._pending += chunk
            if len(self._pending) >= SINK_CHUNK:
                data, self._pending = bytes(self._pending), bytearray()
                await asyncio.to_thread(self._sink, data)
        if self._pending:
            await asyncio.to_thread(self._sink, bytes(self._pending))
            self._pending.clear()
        self._fh.close()

    async def abort(self) -> None:
        self._fh.close()
        await asyncio.to_thread(self.writer.abort)


def _too_large(ctx: ApiContext, limit: int, size: int) -> Problem:
    """413: past the platform's max_upload_bytes, or (a problem naming it) the tenant's upload_bytes quota."""
    if limit < ctx.settings.max_upload_bytes:
        return quota_problem(quotas.QuotaExceeded(quotas.UPLOAD_BYTES, limit, size, "bytes"), 413)
    return Problem(413, f"the file is larger than the limit of {limit} bytes")


async def _body_chunks(request: web.Request) -> AsyncIterator[bytes]:
    async for chunk in request.content.iter_chunked(SINK_CHUNK):
        yield chunk


@contextmanager
def _multipart_errors() -> Iterator[None]:
    """What aiohttp raises on a multipart body it cannot read (a part header that is not ASCII, an
    unknown charset or transfer encoding, text that is not UTF-8…) as a 400, not a 500."""
    try:
        yield
    except (HttpProcessingError, ValueError, LookupError, RuntimeError) as exc:  # UnicodeError is a ValueError
        raise Problem(400, f"malformed multipart body: {exc}") from None


def _header_text(part: BodyPartReader) -> None:
    """400 when the part's name or filename held bytes that are not UTF-8 (aiohttp keeps them as
    surrogates, which no later step could encode)."""
    for value in (part.name, part.filename):
        if value is not None and re.search("[\ud800-\udfff]", value):
            raise Problem(400, f"malformed multipart body: a part header is not UTF-8: {value!r}")


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while True:
        with _multipart_errors():
            chunk = await part.read_chunk(SINK_CHUNK)
        if not chunk:
            return
        yield chunk


async def _receive(request: web.Request, query: UploadQuery, upload: _Upload) -> tuple[str | None, str | None]:
    """Stream the body into ``upload``; the (purpose, filename) the request carried."""
    purpose, filename = query.purpose, query.filename
    if not request.content_type.startswith("multipart/"):
        if filename is not None:
            clean_filename(filename)
        await upload.feed(_body_chunks(request))
        return purpose, filename
    with _multipart_errors():
        reader: MultipartReader = await request.multipart()
    got_file = False
    while True:
        with _multipart_errors():
            part = await reader.next()
        if part is None:
            break
        if not isinstance(part, BodyPartReader):
            raise Problem(400, "nested multipart bodies are not accepted")
        _header_text(part)
        if part.name == "purpose":
            with _multipart_errors():
                purpose = (await part.text()).strip()
        elif part.name == "file" and not got_file:
            filename = part.filename or filename
            clean_filename(filename)
            await upload.feed(_part_chunks(part))
            got_file = True
        else:
            raise validation_problem(
                [{"pointer": f"/{part.name}", "detail": "unknown form field; send `purpose` and `file`"}]
            )
    if not got_file:
        raise validation_problem([{"pointer": "/file", "detail": "the form has no `file` part"}])
    return purpose, filename


@files.post(
    "/v1/files",
    summary="Upload a dataset or a model (streamed to the artifact store, validated before it is kept)",
    query=UploadQuery,
    request_doc=UPLOAD_DOC,
    response=FileObject,
    status=201,
    errors=(400, 409, 413, 422),
)
async def create_file(request: web.Request, call: Call[None, UploadQuery]) -> FileObject:
    ctx = context(request)
    async with ctx.db() as session:
        limit = await session.run_sync(lambda s: quotas.upload_limit(s, call.tenant_id, ctx.settings))
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(ctx, limit, request.content_length)
    file_id = new_id("file")
    key = f"files/{call.tenant_id}/{file_id}"
    with tempfile.TemporaryDirectory(prefix="maas-upload-") as tmp_dir:
        upload = _Upload(ctx, key, tmp_dir)
        upload.limit = limit
        try:
            purpose, raw_name = await _receive(request, call.query, upload)
            if purpose is None:
                raise validation_problem([{"pointer": "/purpose", "detail": "purpose is required"}])
            filename = clean_filename(raw_name)
            try:
                fmt = detect_format(filename, purpose)
                details = await asyncio.to_thread(validate_file, upload.path, fmt, ctx.settings.max_dataset_bytes)
            except InvalidFile as exc:
                raise validation_problem([{"pointer": exc.pointer, "detail": exc.detail}]) from None
            stored = await asyncio.to_thread(upload.writer.complete)
        except BaseException:
            await upload.abort()
            raise
    row = File(
        id=file_id,
        tenant_id=call.tenant_id,
        filename=filename,
        purpose=purpose,
        format=fmt,
        bytes=stored.bytes,
        sha256=stored.sha256,
        storage_key=key,
        details=details,
    )
    try:
        async with ctx.db() as session:
            await session.run_sync(lambda s: _check_storage(s, call.tenant_id, stored.bytes, ctx.settings))
            session.add(row)
            await session.commit()
            await session.refresh(row)
    except BaseException:
        await asyncio.to_thread(ctx.store.delete, key)
        raise
    ctx.metrics.upload_bytes.inc(stored.bytes)
    return FileObject.model_validate(row)


def _check_storage(session: Session, tenant_id: str, size: int, settings: Settings) -> None:
    """409 past the tenant's stored_bytes quota, under its lock until the file's row is committed."""
    try:
        quotas.check_storage(session, tenant_id, size, settings)
    except quotas.QuotaExceeded as exc:
        raise quota_problem(exc) from None


async def _get_file(ctx: ApiContext, tenant_id: str, file_id: str) -> File:
    async with ctx.db() as session:
        row = await session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant_id))
    if row is None:
        raise not_found("file", file_id)
    return row


@files.get("/v1/files", summary="List files, newest first", query=FileListQuery, response=Page[FileObject])
async def list_files(request: web.Request, call: Call[None, FileListQuery]) -> Page[FileObject]:
    statement = select(File).where(File.tenant_id == call.tenant_id)
    if call.query.purpose:
        statement = statement.where(File.purpose == call.query.purpose)
    async with context(request).db() as session:
        rows = list(await session.scalars(page_statement(statement, File.id, call.query)))
    return make_page(rows, call.query, FileObject.model_validate)


@files.get("/v1/files/{id}", summary="Get a file's metadata", response=FileObject, errors=(404,))
async def get_file(request: web.Request, call: Call[None, None]) -> FileObject:
    return FileObject.model_validate(await _get_file(context(request), call.tenant_id, call.params["id"]))


@files.get(
    "/v1/files/{id}/content",
    summary="Download a file: a redirect to a short-lived presigned URL",
    status=302,
    response_doc={"headers": {"Location": {"schema": {"type": "string"}}}},
    errors=(404,),
)
async def get_file_content(request: web.Request, call: Call[None, None]) -> web.Response:
    ctx = context(request)
    row = await _get_file(ctx, call.tenant_id, call.params["id"])
    url, expires_at = await asyncio.to_thread(ctx.store.presigned_url, row.storage_key, filename=row.filename)
    ctx.usage.count_download(call.tenant_id, "file", row.bytes)
    raise web.HTTPFound(url, headers={"Expires": expires_at.strftime("%a, %d %b %Y %H:%M:%S GMT")})


@files.delete(
    "/v1/files/{id}",
    summary="Delete a file and its stored object (409 while a queued or running job uses it)",
    response=DeletedFile,
    errors=(404, 409),
)
async def delete_file(request: web.Request, call: Call[None, None]) -> DeletedFile:
    file_id = call.params["id"]
    await run_delete(context(request), "file", file_id, lambda s: delete_file_rows(s, call.tenant_id, file_id))
    return DeletedFile(id=file_id)
