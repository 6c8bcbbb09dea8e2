"""The SDK (``maas_client``) against the real API, a real worker and PostgreSQL/S3: typed objects and
errors, pages as iterators, idempotent creates, checksummed downloads, a live event stream that
survives a dropped connection (through a proxy that cuts it) without missing or repeating an event,
and retries that honour ``Retry-After`` (against a stand-in server answering 429 and 503).

The API of the ``api`` fixture runs on the test's event loop, so the blocking ``Client`` runs in a
thread (``asyncio.to_thread``) while the loop serves it.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from core.objects import FileObject, JobEventObject, JobObject
from maas_client import (
    APIConnectionError,
    AsyncClient,
    Client,
    NotFound,
    RateLimited,
    RetryPolicy,
    ValidationError,
)
from tests.support.datasets import digits_bytes, npz
from tests.support.eventually import eventually_async
from tests.support.tcp_proxy import CuttingProxy


def base_url(api) -> str:
    return str(api.make_url("")).rstrip("/")


async def test_files_upload_list_and_download_through_the_blocking_client(api, tenant, tmp_path: Path):
    data = digits_bytes()[0]
    (tmp_path / "digits.npz").write_bytes(data)
    seen: list[tuple[int, int | None]] = []

    def work() -> tuple[FileObject, list[FileObject], Path, FileObject]:
        with Client(base_url(api), tenant.key) as maas:
            uploaded = maas.files.upload(
                tmp_path / "digits.npz", progress=lambda sent, total: seen.append((sent, total))
            )
            small = maas.files.upload(npz(X=np.zeros((3, 2), np.float32)), filename="small.npz")
            listed = list(maas.files.list(page_size=1))  # one file a page: the iterator follows the cursor
            path = maas.files.download(uploaded.id, tmp_path / "back")
            return uploaded, listed, path, small

    uploaded, listed, path, small = await asyncio.to_thread(work)
    assert isinstance(uploaded, FileObject) and uploaded.format == "npz"
    assert uploaded.sha256 == hashlib.sha256(data).hexdigest() and uploaded.bytes == len(data)
    assert seen[0] == (0, len(data)) and seen[-1] == (len(data), len(data)) and len(seen) >= 2
    assert [f.id for f in listed] == [small.id, uploaded.id]
    assert path == tmp_path / "back" and path.read_bytes() == data


async def test_a_bad_spec_is_a_validation_error_with_its_pointer(api, tenant):
    async with AsyncClient(base_url(api), tenant.key) as maas:
        with pytest.raises(ValidationError) as raised:
            await maas.jobs.create("training", {"model": {"arch": "resnet152"}, "dataset": {"builtin": "digits"}})
        assert raised.value.status == 422
        assert "/spec/model/arch" in [e.pointer for e in raised.value.errors]
        with pytest.raises(ValidationError) as bad_file:
            await maas.files.upload(b"a,b,c\n1,2,3\n4,5\n", filename="ragged.csv")
        assert bad_file.value.pointer == "/file" and "line 3" in bad_file.value.detail
        with pytest.raises(NotFound):
            await maas.jobs.get("job_" + "0" * 26)


async def test_a_create_repeated_with_its_idempotency_key_is_the_same_job(api, tenant, job_worker):
    async with AsyncClient(base_url(api), tenant.key) as maas:
        first = await maas.jobs.create("test.sleep", {"steps": 2}, idempotency_key="sdk-once")
        again = await maas.jobs.create("test.sleep", {"steps": 2}, idempotency_key="sdk-once")
        other = await maas.jobs.create("test.sleep", {"steps": 2})  # a fresh key of its own
        assert isinstance(first, JobObject) and again.id == first.id and other.id != first.id
        done = await maas.jobs.wait(first.id, timeout=60)
        assert done.status == "succeeded" and done.progress.step == 2
        listed = [job.id async for job in maas.jobs.list(type="test.sleep", page_size=1)]
        assert listed == [other.id, first.id]


async def test_a_live_event_stream_survives_a_dropped_connection(api, tenant, job_worker):
    """Both clients watch one job through the proxy; every connection is cut twice mid-job."""
    proxy = CuttingProxy(api.port)
    through_proxy = await proxy.start()
    try:
        async with AsyncClient(through_proxy, tenant.key) as flaky, AsyncClient(base_url(api), tenant.key) as direct:
            job = await direct.jobs.create("test.sleep", {"steps": 40, "seconds": 8})

            def blocking_watch() -> list[JobEventObject]:
                with Client(through_proxy, tenant.key) as blocking:
                    return list(blocking.jobs.events(job.id, stream=True))

            watched = asyncio.create_task(asyncio.to_thread(blocking_watch))
            await eventually_async(lambda: proxy.connections >= 1, 30, "the blocking stream to connect")
            streamed: list[JobEventObject] = []
            async for event in flaky.jobs.events(job.id, stream=True):
                streamed.append(event)
                if len(streamed) in (5, 20):  # twice, mid-job
                    proxy.cut()
            blocking_streamed = await watched
            stored = [event async for event in direct.jobs.events(job.id)]
    finally:
        await proxy.stop()
    assert proxy.connections >= 6  # both streams really were dropped, and opened again each time
    for seen in (streamed, blocking_streamed):
        assert [e.id for e in seen] == [e.id for e in stored]  # nothing missed, nothing repeated
        assert seen[-1].type == "status" and seen[-1].data["status"] == "succeeded"
        assert [e.data["step"] for e in seen if e.type == "progress"] == list(range(1, 41))


class Standin:
    """The outside world: a server answering the scripted statuses (with their headers) in turn."""

    def __init__(self, script: list[tuple[int, dict[str, str], dict]]):
        self.script = script
        self.requests: list[tuple[float, dict[str, str]]] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((time.monotonic(), dict(request.headers)))
        status, headers, body = self.script.pop(0)
        return web.json_response(body, status=status, headers=headers)


async def standin(aiohttp_server, script) -> tuple[Standin, str]:
    server = Standin(script)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    running = await aiohttp_server(app)
    return server, str(running.make_url("")).rstrip("/")


FILE = {
    "id": "file_01",
    "filename": "d.npz",
    "purpose": "dataset",
    "format": "npz",
    "bytes": 1,
    "sha256": "0" * 64,
    "created_at": "2026-01-01T00:00:00Z",
    "details": {},
}
PROBLEM_429 = {"title": "Too many requests", "status": 429, "detail": "slow down"}


async def test_429_and_503_are_retried_after_retry_after(aiohttp_server):
    http_date = format_datetime(datetime.now(UTC) + timedelta(seconds=4), usegmt=True)
    server, url = await standin(
        aiohttp_server,
        [
            (429, {"Retry-After": "1"}, PROBLEM_429),
            (503, {"Retry-After": http_date}, {"status": 503, "detail": "not ready"}),
            (200, {}, FILE),
        ],
    )
    async with AsyncClient(url, "maas_test", retry=RetryPolicy(max_retries=3)) as maas:
        file = await maas.files.get("file_01")
    assert file.id == "file_01" and len(server.requests) == 3
    (first, _), (second, _), (third, _) = server.requests
    assert second - first >= 1.0  # Retry-After: 1
    assert third - second >= 1.0  # an HTTP date 3 to 4 s ahead when made, so at least 1 s ahead when read


async def test_a_retried_create_keeps_its_idempotency_key_and_retries_run_out(aiohttp_server):
    problem = {
        "title": "Unprocessable content",
        "status": 422,
        "detail": "/spec/x: bad",
        "errors": [{"pointer": "/spec/x", "detail": "bad"}],
    }
    server, url = await standin(aiohttp_server, [(503, {"Retry-After": "0"}, {}), (422, {}, problem)])

    def create() -> ValidationError:
        with Client(url, "maas_test") as maas, pytest.raises(ValidationError) as raised:
            maas.jobs.create("training", {"x": 1})
        return raised.value

    error = await asyncio.to_thread(create)
    assert error.pointer == "/spec/x"
    keys = [headers["Idempotency-Key"] for _, headers in server.requests]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("maas-client-")

    server, url = await standin(aiohttp_server, [(429, {"Retry-After": "0"}, PROBLEM_429)] * 3)
    async with AsyncClient(url, "maas_test", max_retries=2) as maas:
        with pytest.raises(RateLimited) as limited:
            await maas.files.get("file_01")
    assert limited.value.retry_after == 0 and limited.value.detail == "slow down" and len(server.requests) == 3


class Hangup:
    """A server that drops the connection of the first request without answering, then answers."""

    def __init__(self) -> None:
        self.requests: list[str] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(f"{request.method} {request.path}")
        if len(self.requests) == 1:
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        return web.json_response(FILE, status=200 if request.method == "GET" else 201)


async def test_a_dropped_connection_is_retried_only_for_calls_safe_to_repeat(aiohttp_server):
    for method, call, retried in (
        ("GET", lambda maas: maas.files.get("file_01"), True),
        ("POST", lambda maas: maas.files.upload(io.BytesIO(b"x"), filename="d.npz"), False),  # a read stream
    ):
        server = Hangup()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", server.handle)
        url = str((await aiohttp_server(app)).make_url("")).rstrip("/")
        async with AsyncClient(url, "maas_test", retry=RetryPolicy(backoff_s=0.01)) as maas:
            if retried:
                assert (await call(maas)).id == "file_01"
            else:
                with pytest.raises(APIConnectionError):
                    await call(maas)
        assert len(server.requests) == (2 if retried else 1), method
