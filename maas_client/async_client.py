"""``AsyncClient``: the SDK for asyncio, call for call the same as ``Client`` (same ``calls``, same
objects, same errors, same retry policy), with ``await`` and ``async for``.

    async with AsyncClient() as maas:
        job = await maas.jobs.create("training", {...})
        async for event in maas.jobs.events(job.id, stream=True):
            print(event.type, event.message)
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np

from core.objects import (
    ArtifactDownload,
    ArtifactObject,
    DeletedFile,
    DeletedModelVersion,
    DeploymentObject,
    DeploymentStatsList,
    FileObject,
    JobEventObject,
    JobObject,
    ModelObject,
    ModelVersionObject,
    PredictionObject,
    WebhookDeliveryObject,
    WebhookSecretObject,
)
from maas_client import calls
from maas_client.calls import TERMINAL, Call, Page
from maas_client.client import Inputs, Predictions, _deadline, _download_path, _left
from maas_client.config import DEFAULT_TIMEOUT, resolve
from maas_client.errors import APIConnectionError, DeploymentFailed, WaitTimeout
from maas_client.retries import RetryPolicy
from maas_client.sse import Resumption, SseParser
from maas_client.tensors import HEADER_LENGTH_HEADER, decode_response, encode_request, to_oip_json
from maas_client.transfers import ChecksummedFile, FileSource, Progress, UploadSource, upload_source
from maas_client.transport import AsyncTransport
from maas_client.webhooks import verify

T = TypeVar("T")


async def _chunks(source: UploadSource, progress: Progress | None) -> AsyncIterator[bytes]:
    """The upload's chunks, each read off the event loop."""
    chunks = source.chunks(progress)
    while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
        yield chunk


class _AsyncResource:
    def __init__(self, transport: AsyncTransport):
        self._t = transport

    async def _pages(self, make: Callable[[str | None], Call[Page[T]]]) -> AsyncIterator[T]:
        after = None
        while True:
            page = await self._t.send(make(after))
            for item in page.data:
                yield item
            if page.next_cursor is None:
                return
            after = page.next_cursor


class AsyncFiles(_AsyncResource):
    """Datasets and models coming in (see ``Client.files``)."""

    async def upload(
        self,
        file: FileSource,
        *,
        purpose: str = "dataset",
        filename: str | None = None,
        progress: Progress | None = None,
    ) -> FileObject:
        """Upload a path, bytes or an open binary file, streamed in 1 MiB chunks; ``progress(sent, total)``
        after each chunk. A file the API refuses raises ``ValidationError`` with its pointer."""
        source = upload_source(file, filename)
        headers = {"Content-Type": "application/octet-stream"}
        if source.size is not None:
            headers["Content-Length"] = str(source.size)
        response = await self._t.request(
            "POST",
            "/v1/files",
            idempotent=False,
            repeatable=source.replayable,
            content=lambda: _chunks(source, progress),
            params={"purpose": purpose, "filename": source.filename},
            headers=headers,
        )
        return FileObject.model_validate(response.json())

    async def get(self, file_id: str) -> FileObject:
        """One file: name, purpose, format, size, sha256 and what validation found."""
        return await self._t.send(calls.get_file(file_id))

    def list(self, *, purpose: str | None = None, page_size: int | None = None) -> AsyncIterator[FileObject]:
        """Every file, newest first, fetched page by page (``async for``)."""
        return self._pages(lambda after: calls.list_files(purpose, page_size, after))

    async def download(self, file_id: str, path: str | Path) -> Path:
        """Download a file's content to ``path`` (a directory: under its name), checking its sha256."""
        file = await self.get(file_id)
        url = await self._t.send(calls.file_content(file_id))
        target = _download_path(path, file.filename)
        with ChecksummedFile(target, file.sha256) as out:
            async for chunk in self._t.download(url):
                out.write(chunk)
        return target

    async def delete(self, file_id: str) -> DeletedFile:
        """Delete a file (409 while a queued or running job's spec names it)."""
        return await self._t.send(calls.delete_file(file_id))


class AsyncJobs(_AsyncResource):
    """Training, compression and batch inference jobs (see ``Client.jobs``)."""

    async def create(
        self,
        type: str,
        spec: Mapping[str, Any],
        *,
        webhook: str | None = None,
        webhook_events_filter: Sequence[str] | None = None,
        metadata: Mapping[str, str] | None = None,
        priority: int | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> JobObject:
        """Create a job; an ``Idempotency-Key`` is sent (a new one unless given); ``wait`` holds the
        answer up to that many seconds (at most 60); ``priority`` (-100 to 100, default 0) orders your own
        queued jobs, higher first. A bad spec raises ``ValidationError`` with its pointer."""
        return await self._t.send(
            calls.create_job(
                type,
                spec,
                webhook=webhook,
                webhook_events_filter=webhook_events_filter,
                metadata=metadata,
                priority=priority,
                idempotency_key=idempotency_key,
                wait_s=wait,
            )
        )

    async def get(self, job_id: str) -> JobObject:
        """One job: status, progress, metrics, result or error."""
        return await self._t.send(calls.get_job(job_id))

    def list(
        self, *, type: str | None = None, status: str | None = None, page_size: int | None = None
    ) -> AsyncIterator[JobObject]:
        """Every job (of a type, in a status), newest first, fetched page by page (``async for``)."""
        return self._pages(lambda after: calls.list_jobs(type, status, page_size, after))

    async def cancel(self, job_id: str) -> JobObject:
        """Cancel a job: a running one is stopped in its worker and ends ``canceled``."""
        return await self._t.send(calls.cancel_job(job_id))

    async def wait(self, job_id: str, timeout: float | None = None) -> JobObject:
        """The job once it reached a final status; ``WaitTimeout`` after ``timeout`` seconds (None: no limit)."""
        deadline = _deadline(timeout)
        while True:
            left = _left(deadline)
            wait_s = left if left is not None else calls.MAX_PREFER_WAIT_S
            job = await self._t.send(calls.get_job(job_id, wait_s=wait_s))
            if job.status in TERMINAL:
                return job
            if _left(deadline) == 0:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout} s", job)

    def events(self, job_id: str, *, stream: bool = False, after: str | None = None) -> AsyncIterator[JobEventObject]:
        """The job's events, oldest first: those stored so far, or (``stream=True``) live until the job
        ends, resuming a dropped connection with ``Last-Event-ID`` (nothing missed or repeated)."""
        if not stream:
            return self._stored_events(job_id, after)
        return self._live_events(job_id, after)

    async def _stored_events(self, job_id: str, after: str | None) -> AsyncIterator[JobEventObject]:
        while True:
            page = await self._t.send(calls.job_events(job_id, after, 1000))
            for event in page.data:
                yield event
            if page.next_cursor is None:
                return
            after = page.next_cursor

    async def _live_events(self, job_id: str, after: str | None) -> AsyncIterator[JobEventObject]:
        state = Resumption(after)
        path = calls.events_path(job_id)
        while True:
            try:
                response = await self._t.open_stream(path, state.headers())
                try:
                    state.connected()
                    parser = SseParser()
                    async for line in response.aiter_lines():
                        sse = parser.feed(line)
                        if sse is None:
                            continue
                        event = JobEventObject.model_validate_json(sse.data)
                        state.received(event.id, calls.is_terminal_event(event))
                        yield event
                finally:
                    await response.aclose()
                if not state.closed():
                    return
            except httpx.TransportError as exc:
                delay = state.broken()
                if delay is None:
                    raise APIConnectionError(f"the event stream of {job_id} kept breaking: {exc!r}") from exc
                await asyncio.sleep(delay)

    async def artifacts(self, job_id: str) -> builtins.list[ArtifactObject]:
        """The job's artifacts (checkpoints, model, weights, plots, reports), oldest first."""
        return await self._t.send(calls.job_artifacts(job_id))

    async def webhook_deliveries(self, job_id: str) -> builtins.list[WebhookDeliveryObject]:
        """Every webhook delivery of the job, with each attempt."""
        return await self._t.send(calls.job_webhook_deliveries(job_id))


class AsyncArtifacts(_AsyncResource):
    """What jobs produced (see ``Client.artifacts``)."""

    async def get(self, artifact_id: str) -> ArtifactDownload:
        """The artifact with a presigned ``download_url`` (``Gone`` once its content was deleted)."""
        return await self._t.send(calls.get_artifact(artifact_id))

    async def download(self, artifact_id: str, path: str | Path) -> Path:
        """Download the artifact to ``path`` (a directory: under its name), checking its sha256
        (``ChecksumMismatch`` otherwise, and nothing is left)."""
        link = await self.get(artifact_id)
        target = _download_path(path, link.name)
        with ChecksummedFile(target, link.sha256) as out:
            async for chunk in self._t.download(link.download_url):
                out.write(chunk)
        return target

    async def delete(self, artifact_id: str) -> ArtifactObject:
        """Delete a finished job's artifact; its row stays, marked deleted."""
        return await self._t.send(calls.delete_artifact(artifact_id))


class AsyncModels(_AsyncResource):
    """The model registry (see ``Client.models``)."""

    def list(self, *, page_size: int | None = None) -> AsyncIterator[ModelObject]:
        """Every model, newest first, fetched page by page (``async for``)."""
        return self._pages(lambda after: calls.list_models(page_size, after))

    async def versions(self, name: str) -> builtins.list[ModelVersionObject]:
        """A model's versions, oldest first."""
        return await self._t.send(calls.list_versions(name))

    async def get_version(self, name: str, version: int) -> ModelVersionObject:
        """One version: signature, metrics, lineage, sha256."""
        return await self._t.send(calls.get_version(name, version))

    async def register(
        self,
        name: str,
        file_id: str,
        *,
        metrics: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ModelVersionObject:
        """Register an uploaded ONNX file (purpose ``model``) as the next version of ``name``."""
        return await self._t.send(calls.register_version(name, file_id, metrics, idempotency_key))

    async def delete_version(self, name: str, version: int) -> DeletedModelVersion:
        """Delete a version (409 while deployed); its number is never given again."""
        return await self._t.send(calls.delete_version(name, version))


class AsyncDeployments(_AsyncResource):
    """Which version of a model serves (see ``Client.deployments``)."""

    async def deploy(self, name: str, version: int, **settings: int) -> DeploymentObject:
        """Deploy ``version`` of ``name`` (or switch to it); ``settings`` are the batching settings."""
        return await self._t.send(calls.deploy(name, version, settings))

    async def get(self, name: str) -> DeploymentObject:
        """The deployment: version, settings, status and replicas."""
        return await self._t.send(calls.get_deployment(name))

    async def undeploy(self, name: str) -> None:
        """Undeploy the model: its replicas finish what is queued, then unload."""
        await self._t.send(calls.undeploy(name))

    async def stats(self, *, window_minutes: int | None = None) -> DeploymentStatsList:
        """Each deployment's traffic over the last ``window_minutes`` (see ``Client.deployments.stats``)."""
        return await self._t.send(calls.deployment_stats(window_minutes))

    async def wait_ready(
        self, name: str, version: int | None = None, *, timeout: float = 120.0, poll_s: float = 0.5
    ) -> DeploymentObject:
        """The deployment once ``version`` (default: the deployed one) is ready on a model server;
        ``DeploymentFailed`` when every server failed, ``WaitTimeout`` after ``timeout``."""
        deadline = _deadline(timeout)
        while True:
            deployment = await self.get(name)
            if deployment.status == "failed":
                errors = deployment.status_reason or "; ".join(r.error for r in deployment.replicas if r.error)
                raise DeploymentFailed(f"{name} v{deployment.version} failed to load: {errors}", deployment)
            if deployment.status == "ready" and version in (None, deployment.version):
                return deployment
            if _left(deadline) == 0:
                raise WaitTimeout(f"{name} is still {deployment.status} after {timeout} s", deployment)
            await asyncio.sleep(poll_s)


class AsyncPredictions(_AsyncResource):
    """Asynchronous predictions (see ``Client.predictions``)."""

    async def create(
        self,
        model: str,
        inputs: Inputs | Sequence[Mapping[str, Any]],
        *,
        version: int | None = None,
        timeout_ms: int | None = None,
        webhook: str | None = None,
        webhook_events_filter: Sequence[str] | None = None,
        idempotency_key: str | None = None,
        wait: float | None = None,
    ) -> PredictionObject:
        """Run ``model`` on ``inputs`` (named arrays or OIP JSON tensors) later; an ``Idempotency-Key``
        is sent (a new one unless given); ``wait`` holds the answer (at most 60 s)."""
        tensors = to_oip_json(inputs) if isinstance(inputs, Mapping) else [dict(t) for t in inputs]
        return await self._t.send(
            calls.create_prediction(
                model,
                tensors,
                version=version,
                timeout_ms=timeout_ms,
                webhook=webhook,
                webhook_events_filter=webhook_events_filter,
                idempotency_key=idempotency_key,
                wait_s=wait,
            )
        )

    async def get(self, prediction_id: str) -> PredictionObject:
        """One prediction: status, output or error, and where its time went."""
        return await self._t.send(calls.get_prediction(prediction_id))

    async def wait(self, prediction_id: str, timeout: float | None = None) -> PredictionObject:
        """The prediction once it ended; ``WaitTimeout`` after ``timeout`` seconds (None: no limit)."""
        deadline = _deadline(timeout)
        while True:
            left = _left(deadline)
            wait_s = left if left is not None else calls.MAX_PREFER_WAIT_S
            prediction = await self._t.send(calls.get_prediction(prediction_id, wait_s=wait_s))
            if prediction.status in TERMINAL:
                return prediction
            if _left(deadline) == 0:
                raise WaitTimeout(f"prediction {prediction_id} is still {prediction.status}", prediction)

    async def cancel(self, prediction_id: str) -> PredictionObject:
        """Cancel a prediction that has not started (409 once it runs)."""
        return await self._t.send(calls.cancel_prediction(prediction_id))

    outputs = staticmethod(Predictions.outputs)


class AsyncWebhooks(_AsyncResource):
    """The tenant's webhook signing secret, and checking a delivery with it."""

    async def secret(self) -> WebhookSecretObject:
        """The tenant's signing secret (``whsec_…``)."""
        return await self._t.send(calls.webhook_secret())

    async def rotate(self) -> WebhookSecretObject:
        """A new secret; the old one keeps signing alongside it for 24 hours."""
        return await self._t.send(calls.rotate_webhook_secret())

    verify = staticmethod(verify)


class AsyncClient:
    """The asyncio client: ``AsyncClient(base_url, api_key)``, defaults from ``MAAS_BASE_URL`` and
    ``MAAS_API_KEY``; timeouts and retries as ``Client``. Close it with ``await aclose()`` or ``async with``."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        self.base_url, api_key = resolve(base_url, api_key)
        self._t = AsyncTransport(
            self.base_url,
            api_key,
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            retry=retry or RetryPolicy(max_retries=max_retries),
            transport=transport,
        )
        self.files = AsyncFiles(self._t)
        self.jobs = AsyncJobs(self._t)
        self.artifacts = AsyncArtifacts(self._t)
        self.models = AsyncModels(self._t)
        self.deployments = AsyncDeployments(self._t)
        self.predictions = AsyncPredictions(self._t)
        self.webhooks = AsyncWebhooks(self._t)

    async def infer(
        self, model: str, inputs: Inputs, *, version: int | None = None, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run a deployed model now (Open Inference Protocol v2, binary tensors both ways)."""
        body, header_length = encode_request(inputs, outputs)
        response = await self._t.request(
            "POST",
            calls.infer_path(model, version),
            idempotent=True,
            content=lambda: body,
            headers={"Content-Type": "application/octet-stream", HEADER_LENGTH_HEADER: str(header_length)},
        )
        return decode_response(response.content, response.headers.get(HEADER_LENGTH_HEADER))

    async def aclose(self) -> None:
        """Close the connections."""
        await self._t.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
