"""``Client``: the blocking SDK. Every resource of the API is an attribute (``files``, ``jobs``,
``artifacts``, ``models``, ``deployments``, ``predictions``, ``webhooks``) and ``infer`` calls a
deployed model over the Open Inference Protocol's binary extension.

    from maas_client import Client

    with Client() as maas:                       # MAAS_BASE_URL, MAAS_API_KEY
        data = maas.files.upload("digits.npz")
        job = maas.jobs.create("training", {...}, wait=60)
        job = maas.jobs.wait(job.id, timeout=600)
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
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
from maas_client.config import DEFAULT_TIMEOUT, resolve
from maas_client.errors import APIConnectionError, DeploymentFailed, WaitTimeout
from maas_client.retries import RetryPolicy
from maas_client.sse import Resumption, SseParser
from maas_client.tensors import HEADER_LENGTH_HEADER, decode_response, encode_request, from_oip_json, to_oip_json
from maas_client.transfers import ChecksummedFile, FileSource, Progress, upload_source
from maas_client.transport import SyncTransport
from maas_client.webhooks import verify

T = TypeVar("T")
Inputs = Mapping[str, np.ndarray]


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _left(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _download_path(path: str | Path, name: str) -> Path:
    target = Path(path)
    return target / name if target.is_dir() else target


class _Resource:
    def __init__(self, transport: SyncTransport):
        self._t = transport

    def _pages(self, make: Callable[[str | None], Call[Page[T]]]) -> Iterator[T]:
        after = None
        while True:
            page = self._t.send(make(after))
            yield from page.data
            if page.next_cursor is None:
                return
            after = page.next_cursor


class Files(_Resource):
    """Datasets and models coming in: ``POST /v1/files`` and friends."""

    def upload(
        self,
        file: FileSource,
        *,
        purpose: str = "dataset",
        filename: str | None = None,
        progress: Progress | None = None,
    ) -> FileObject:
        """Upload a path, bytes or an open binary file, streamed in 1 MiB chunks.

        ``purpose``: ``dataset`` (.npz, .csv, .parquet) or ``model`` (.onnx, .safetensors); the
        extension of ``filename`` (default: the path's name) says the format. ``progress(sent, total)``
        is called after each chunk (``total`` is None when the size is unknown). A 422 with the pointer
        of what is wrong with the file raises ``ValidationError``.
        """
        source = upload_source(file, filename)
        headers = {"Content-Type": "application/octet-stream"}
        if source.size is not None:
            headers["Content-Length"] = str(source.size)
        response = self._t.request(
            "POST",
            "/v1/files",
            idempotent=False,
            repeatable=source.replayable,
            content=lambda: source.chunks(progress),
            params={"purpose": purpose, "filename": source.filename},
            headers=headers,
        )
        return FileObject.model_validate(response.json())

    def get(self, file_id: str) -> FileObject:
        """One file: name, purpose, format, size, sha256 and what validation found."""
        return self._t.send(calls.get_file(file_id))

    def list(self, *, purpose: str | None = None, page_size: int | None = None) -> Iterator[FileObject]:
        """Every file, newest first, fetched page by page as the iterator advances."""
        return self._pages(lambda after: calls.list_files(purpose, page_size, after))

    def download(self, file_id: str, path: str | Path) -> Path:
        """Download a file's content to ``path`` (a directory: under its name), checking its sha256."""
        file = self.get(file_id)
        url = self._t.send(calls.file_content(file_id))
        target = _download_path(path, file.filename)
        with ChecksummedFile(target, file.sha256) as out:
            for chunk in self._t.download(url):
                out.write(chunk)
        return target

    def delete(self, file_id: str) -> DeletedFile:
        """Delete a file (409 while a queued or running job's spec names it)."""
        return self._t.send(calls.delete_file(file_id))


class Jobs(_Resource):
    """Training, compression and batch inference jobs: create, watch, cancel, collect."""

    def create(
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
        """Create a job of ``type`` (``training``, ``compression``, ``batch_inference``…) running ``spec``.

        An ``Idempotency-Key`` is sent (a new one unless given), so a retry after a lost answer
        cannot start the job twice. ``wait`` (seconds, at most 60) holds the answer until the job
        ends or the time passes (``Prefer: wait``). ``priority`` (-100 to 100, default 0) orders
        your own queued jobs: higher first. A bad spec raises ``ValidationError`` whose
        ``pointer`` names the field (``/spec/hyperparameters/lr``).
        """
        return self._t.send(
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

    def get(self, job_id: str) -> JobObject:
        """One job: status, progress, metrics, result or error."""
        return self._t.send(calls.get_job(job_id))

    def list(
        self, *, type: str | None = None, status: str | None = None, page_size: int | None = None
    ) -> Iterator[JobObject]:
        """Every job (of a type, in a status), newest first, fetched page by page."""
        return self._pages(lambda after: calls.list_jobs(type, status, page_size, after))

    def cancel(self, job_id: str) -> JobObject:
        """Cancel a job: a running one is stopped in its worker and ends ``canceled``."""
        return self._t.send(calls.cancel_job(job_id))

    def wait(self, job_id: str, timeout: float | None = None) -> JobObject:
        """The job once it reached a final status (succeeded, failed or canceled), whatever it is.

        Long-polls with ``Prefer: wait``; raises ``WaitTimeout`` (with the last job seen) after
        ``timeout`` seconds (None: no limit).
        """
        deadline = _deadline(timeout)
        while True:
            left = _left(deadline)
            job = self._t.send(calls.get_job(job_id, wait_s=left if left is not None else calls.MAX_PREFER_WAIT_S))
            if job.status in TERMINAL:
                return job
            if _left(deadline) == 0:
                raise WaitTimeout(f"job {job_id} is still {job.status} after {timeout} s", job)

    def events(self, job_id: str, *, stream: bool = False, after: str | None = None) -> Iterator[JobEventObject]:
        """The job's events, oldest first (after the event id ``after``).

        ``stream=False``: the events stored so far. ``stream=True``: live, as Server-Sent Events,
        until the job ends; a dropped connection is opened again with ``Last-Event-ID``, so no event
        is missed or repeated.
        """
        if not stream:
            return self._stored_events(job_id, after)
        return self._live_events(job_id, after)

    def _stored_events(self, job_id: str, after: str | None) -> Iterator[JobEventObject]:
        while True:
            page = self._t.send(calls.job_events(job_id, after, 1000))
            yield from page.data
            if page.next_cursor is None:
                return
            after = page.next_cursor

    def _live_events(self, job_id: str, after: str | None) -> Iterator[JobEventObject]:
        state = Resumption(after)
        path = calls.events_path(job_id)
        while True:
            try:
                with closing(self._t.open_stream(path, state.headers())) as response:
                    state.connected()
                    parser = SseParser()
                    for line in response.iter_lines():
                        sse = parser.feed(line)
                        if sse is None:
                            continue
                        event = JobEventObject.model_validate_json(sse.data)
                        state.received(event.id, calls.is_terminal_event(event))
                        yield event
                if not state.closed():
                    return
            except httpx.TransportError as exc:
                delay = state.broken()
                if delay is None:
                    raise APIConnectionError(f"the event stream of {job_id} kept breaking: {exc!r}") from exc
                time.sleep(delay)

    def artifacts(self, job_id: str) -> builtins.list[ArtifactObject]:
        """The job's artifacts (checkpoints, model, weights, plots, reports), oldest first."""
        return self._t.send(calls.job_artifacts(job_id))

    def webhook_deliveries(self, job_id: str) -> builtins.list[WebhookDeliveryObject]:
        """Every webhook delivery of the job, with each attempt."""
        return self._t.send(calls.job_webhook_deliveries(job_id))


class Artifacts(_Resource):
    """What jobs produced, downloaded through short-lived presigned URLs."""

    def get(self, artifact_id: str) -> ArtifactDownload:
        """The artifact with a presigned ``download_url`` (``Gone`` once its content was deleted)."""
        return self._t.send(calls.get_artifact(artifact_id))

    def download(self, artifact_id: str, path: str | Path) -> Path:
        """Download the artifact to ``path`` (a directory: under its name) and check its sha256 against
        the one the API recorded; on a mismatch ``ChecksumMismatch`` is raised and nothing is left."""
        link = self.get(artifact_id)
        target = _download_path(path, link.name)
        with ChecksummedFile(target, link.sha256) as out:
            for chunk in self._t.download(link.download_url):
                out.write(chunk)
        return target

    def delete(self, artifact_id: str) -> ArtifactObject:
        """Delete a finished job's artifact; its row stays, marked deleted."""
        return self._t.send(calls.delete_artifact(artifact_id))


class Models(_Resource):
    """The model registry: models and their immutable versions."""

    def list(self, *, page_size: int | None = None) -> Iterator[ModelObject]:
        """Every model, newest first, fetched page by page."""
        return self._pages(lambda after: calls.list_models(page_size, after))

    def versions(self, name: str) -> builtins.list[ModelVersionObject]:
        """A model's versions, oldest first."""
        return self._t.send(calls.list_versions(name))

    def get_version(self, name: str, version: int) -> ModelVersionObject:
        """One version: signature, metrics, lineage, sha256."""
        return self._t.send(calls.get_version(name, version))

    def register(
        self,
        name: str,
        file_id: str,
        *,
        metrics: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> ModelVersionObject:
        """Register an uploaded ONNX file (purpose ``model``) as the next version of ``name``."""
        return self._t.send(calls.register_version(name, file_id, metrics, idempotency_key))

    def delete_version(self, name: str, version: int) -> DeletedModelVersion:
        """Delete a version (409 while deployed); its number is never given again."""
        return self._t.send(calls.delete_version(name, version))


class Deployments(_Resource):
    """Which version of a model serves, with which batching settings, and where it is ready."""

    def deploy(self, name: str, version: int, **settings: int) -> DeploymentObject:
        """Deploy ``version`` of ``name`` (or switch to it, dropping no request); ``settings``:
        ``max_batch_size``, ``max_queue_delay_us``, ``max_queue_size``, ``timeout_ms``, and the scaling
        ones ``min_replicas``, ``max_replicas``, ``target_concurrency``, ``idle_timeout_s``,
        ``cold_start_timeout_ms``."""
        return self._t.send(calls.deploy(name, version, settings))

    def get(self, name: str) -> DeploymentObject:
        """The deployment: version, settings, status and replicas."""
        return self._t.send(calls.get_deployment(name))

    def undeploy(self, name: str) -> None:
        """Undeploy the model: its replicas finish what is queued, then unload."""
        self._t.send(calls.undeploy(name))

    def stats(self, *, window_minutes: int | None = None) -> DeploymentStatsList:
        """Each deployment's traffic over the last ``window_minutes`` (1 to 1440; None: the API's
        default, 5), by model name: requests and requests per minute, errors and error rate, p50/p99
        latency in ms and mean/max batch size, from its recorded synchronous requests. A window out of
        range raises ``BadRequest`` (400) naming ``window_minutes``."""
        return self._t.send(calls.deployment_stats(window_minutes))

    def wait_ready(
        self, name: str, version: int | None = None, *, timeout: float = 120.0, poll_s: float = 0.5
    ) -> DeploymentObject:
        """The deployment once ``version`` (default: whatever is deployed) is ready on a model server.

        Raises ``DeploymentFailed`` when every server that tried failed, ``WaitTimeout`` after ``timeout``.
        """
        deadline = _deadline(timeout)
        while True:
            deployment = self.get(name)
            if deployment.status == "failed":
                errors = deployment.status_reason or "; ".join(r.error for r in deployment.replicas if r.error)
                raise DeploymentFailed(f"{name} v{deployment.version} failed to load: {errors}", deployment)
            if deployment.status == "ready" and version in (None, deployment.version):
                return deployment
            if _left(deadline) == 0:
                raise WaitTimeout(f"{name} is still {deployment.status} after {timeout} s", deployment)
            time.sleep(poll_s)


class Predictions(_Resource):
    """Asynchronous predictions: one request to a deployed model, answered later (or by webhook)."""

    def create(
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
        """Run ``model`` on ``inputs`` (named arrays, or Open Inference Protocol JSON tensors) later.

        An ``Idempotency-Key`` is sent (a new one unless given). ``wait`` (seconds, at most 60) holds
        the answer until the prediction ends. ``webhook`` is told of ``start`` and ``completed``,
        signed per Standard Webhooks (check deliveries with ``client.webhooks.verify``).
        """
        tensors = to_oip_json(inputs) if isinstance(inputs, Mapping) else [dict(t) for t in inputs]
        return self._t.send(
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

    def get(self, prediction_id: str) -> PredictionObject:
        """One prediction: status, output or error, and where its time went."""
        return self._t.send(calls.get_prediction(prediction_id))

    def wait(self, prediction_id: str, timeout: float | None = None) -> PredictionObject:
        """The prediction once it ended; ``WaitTimeout`` after ``timeout`` seconds (None: no limit)."""
        deadline = _deadline(timeout)
        while True:
            left = _left(deadline)
            wait_s = left if left is not None else calls.MAX_PREFER_WAIT_S
            prediction = self._t.send(calls.get_prediction(prediction_id, wait_s=wait_s))
            if prediction.status in TERMINAL:
                return prediction
            if _left(deadline) == 0:
                raise WaitTimeout(f"prediction {prediction_id} is still {prediction.status}", prediction)

    def cancel(self, prediction_id: str) -> PredictionObject:
        """Cancel a prediction that has not started (409 once it runs)."""
        return self._t.send(calls.cancel_prediction(prediction_id))

    @staticmethod
    def outputs(prediction: PredictionObject) -> dict[str, np.ndarray]:
        """A succeeded prediction's outputs as named arrays."""
        if prediction.output is None:
            raise ValueError(f"prediction {prediction.id} has no output: it is {prediction.status}")
        return from_oip_json(prediction.output["outputs"])


class Webhooks(_Resource):
    """The secret that signs this tenant's webhooks, and checking a delivery with it."""

    def secret(self) -> WebhookSecretObject:
        """The tenant's signing secret (``whsec_…``)."""
        return self._t.send(calls.webhook_secret())

    def rotate(self) -> WebhookSecretObject:
        """A new secret; the old one keeps signing alongside it for 24 hours."""
        return self._t.send(calls.rotate_webhook_secret())

    verify = staticmethod(verify)


class Client:
    """The blocking client: ``Client(base_url, api_key)``, defaults from ``MAAS_BASE_URL`` and ``MAAS_API_KEY``.

    ``timeout`` applies to each HTTP call (an ``httpx.Timeout`` or seconds); ``max_retries`` repeats a
    call answered 429 or 503 (after ``Retry-After``), or one that is safe to repeat after a
    connection error. Close it (or use it in ``with``) to release its connections.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        max_retries: int = 3,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.base_url, api_key = resolve(base_url, api_key)
        self._t = SyncTransport(
            self.base_url,
            api_key,
            timeout=timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout),
            retry=retry or RetryPolicy(max_retries=max_retries),
            transport=transport,
        )
        self.files = Files(self._t)
        self.jobs = Jobs(self._t)
        self.artifacts = Artifacts(self._t)
        self.models = Models(self._t)
        self.deployments = Deployments(self._t)
        self.predictions = Predictions(self._t)
        self.webhooks = Webhooks(self._t)

    def infer(
        self, model: str, inputs: Inputs, *, version: int | None = None, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run a deployed model now (Open Inference Protocol v2, binary tensors both ways).

        ``inputs`` maps each input name to an array (batch first); the answer maps each output
        name (or only ``outputs``) to an array. Merged with concurrent requests on the model server.
        """
        body, header_length = encode_request(inputs, outputs)
        response = self._t.request(
            "POST",
            calls.infer_path(model, version),
            idempotent=True,
            content=lambda: body,
            headers={"Content-Type": "application/octet-stream", HEADER_LENGTH_HEADER: str(header_length)},
        )
        return decode_response(response.content, response.headers.get(HEADER_LENGTH_HEADER))

    def close(self) -> None:
        """Close the connections."""
        self._t.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
