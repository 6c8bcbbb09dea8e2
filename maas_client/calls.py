"""Every call of the API as a value: method, path, query, body, headers, whether it is safe to repeat,
and how to read the answer into a typed object. Pure (no I/O): the sync and the async client send
the same ``Call`` objects through their transports, so a route is described once.

Objects are the API's own definitions (``core.objects``): what the server renders is what the
client reads.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel

from core.job_states import TERMINAL
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

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

# the API holds a `Prefer: wait=N` request for at most this long (MAAS_MAX_WAIT_S, 60 s by default)
MAX_PREFER_WAIT_S = 60


@dataclass(frozen=True)
class Call(Generic[T]):
    """One HTTP call and how to read its answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: Mapping[str, Any] | None = None
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    idempotent: bool = True  # safe to send again after a connection error
    wait_s: float = 0  # the server may hold the answer this long (`Prefer: wait`): added to the read timeout


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list: the items, and the cursor of the next page (None on the last)."""

    data: list[T]
    next_cursor: str | None


def _one(model: type[M]) -> Callable[[httpx.Response], M]:
    return lambda response: model.model_validate(response.json())


def _items(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    return lambda response: [model.model_validate(item) for item in response.json()["data"]]


def _page(model: type[M]) -> Callable[[httpx.Response], Page[M]]:
    def parse(response: httpx.Response) -> Page[M]:
        body = response.json()
        cursor = body.get("next_cursor") if body.get("has_more") else None
        return Page([model.model_validate(item) for item in body["data"]], cursor)

    return parse


def _nothing(response: httpx.Response) -> None:
    return None


def _query(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def segment(value: str | int) -> str:
    return quote(str(value), safe="")


def _creating(idempotency_key: str | None, wait_s: float | None) -> dict[str, str]:
    """Headers of a create: an ``Idempotency-Key`` (a new one unless given), so a repeat is harmless."""
    headers = {"Idempotency-Key": idempotency_key or f"maas-client-{uuid.uuid4()}"}
    return {**headers, **_prefer(wait_s)}


def _prefer(wait_s: float | None) -> dict[str, str]:
    return {"Prefer": f"wait={max(1, round(wait_s))}"} if wait_s else {}


def _held(wait_s: float | None) -> float:
    return min(wait_s, MAX_PREFER_WAIT_S) if wait_s else 0


# ---------------------------------------------------------------- files


def get_file(file_id: str) -> Call[FileObject]:
    return Call("GET", f"/v1/files/{segment(file_id)}", _one(FileObject))


def list_files(purpose: str | None, limit: int | None, after: str | None) -> Call[Page[FileObject]]:
    return Call("GET", "/v1/files", _page(FileObject), params=_query(purpose=purpose, limit=limit, after=after))


def file_content(file_id: str) -> Call[str]:
    """The presigned URL the content link redirects to."""
    return Call("GET", f"/v1/files/{segment(file_id)}/content", lambda response: response.headers["location"])


def delete_file(file_id: str) -> Call[DeletedFile]:
    return Call("DELETE", f"/v1/files/{segment(file_id)}", _one(DeletedFile))


# ---------------------------------------------------------------- jobs


def create_job(
    type_: str,
    spec: Mapping[str, Any],
    *,
    webhook: str | None,
    webhook_events_filter: Sequence[str] | None,
    metadata: Mapping[str, str] | None,
    idempotency_key: str | None,
    wait_s: float | None,
    priority: int | None = None,
) -> Call[JobObject]:
    body = _query(
        type=type_,
        spec=dict(spec),
        webhook=webhook,
        webhook_events_filter=list(webhook_events_filter) if webhook_events_filter is not None else None,
        metadata=dict(metadata) if metadata else None,
        priority=priority,
    )
    headers = _creating(idempotency_key, _held(wait_s))
    return Call("POST", "/v1/jobs", _one(JobObject), json=body, headers=headers, wait_s=_held(wait_s))


def get_job(job_id: str, wait_s: float | None = None) -> Call[JobObject]:
    held = _held(wait_s)
    return Call("GET", f"/v1/jobs/{segment(job_id)}", _one(JobObject), headers=_prefer(held), wait_s=held)


def list_jobs(type_: str | None, status: str | None, limit: int | None, after: str | None) -> Call[Page[JobObject]]:
    params = _query(type=type_, status=status, limit=limit, after=after)
    return Call("GET", "/v1/jobs", _page(JobObject), params=params)


def cancel_job(job_id: str) -> Call[JobObject]:
    # asking twice is harmless: a cancel of a canceled job answers the job
    return Call("POST", f"/v1/jobs/{segment(job_id)}/cancel", _one(JobObject))


def job_events(job_id: str, after: str | None, limit: int | None) -> Call[Page[JobEventObject]]:
    return Call(
        "GET", f"/v1/jobs/{segment(job_id)}/events", _page(JobEventObject), params=_query(after=after, limit=limit)
    )


def events_path(job_id: str) -> str:
    """The events of a job: a page as JSON, or a live stream with ``Accept: text/event-stream``."""
    return f"/v1/jobs/{segment(job_id)}/events"


def job_artifacts(job_id: str) -> Call[list[ArtifactObject]]:
    return Call("GET", f"/v1/jobs/{segment(job_id)}/artifacts", _items(ArtifactObject))


def job_webhook_deliveries(job_id: str) -> Call[list[WebhookDeliveryObject]]:
    return Call("GET", f"/v1/jobs/{segment(job_id)}/webhook-deliveries", _items(WebhookDeliveryObject))


def is_terminal_event(event: JobEventObject) -> bool:
    """Whether the event is the job's last: its change to a final status."""
    return event.type == "status" and event.data.get("status") in TERMINAL


# ---------------------------------------------------------------- artifacts


def get_artifact(artifact_id: str) -> Call[ArtifactDownload]:
    return Call("GET", f"/v1/artifacts/{segment(artifact_id)}", _one(ArtifactDownload))


def delete_artifact(artifact_id: str) -> Call[ArtifactObject]:
    return Call("DELETE", f"/v1/artifacts/{segment(artifact_id)}", _one(ArtifactObject))


# ---------------------------------------------------------------- models and deployments


def list_models(limit: int | None, after: str | None) -> Call[Page[ModelObject]]:
    return Call("GET", "/v1/models", _page(ModelObject), params=_query(limit=limit, after=after))


def list_versions(name: str) -> Call[list[ModelVersionObject]]:
    return Call("GET", f"/v1/models/{segment(name)}/versions", _items(ModelVersionObject))


def get_version(name: str, version: int) -> Call[ModelVersionObject]:
    return Call("GET", f"/v1/models/{segment(name)}/versions/{segment(version)}", _one(ModelVersionObject))


def register_version(
    name: str, file_id: str, metrics: Mapping[str, Any] | None, idempotency_key: str | None
) -> Call[ModelVersionObject]:
    body = {"file_id": file_id, "metrics": dict(metrics or {})}
    headers = _creating(idempotency_key, None)
    return Call("POST", f"/v1/models/{segment(name)}/versions", _one(ModelVersionObject), json=body, headers=headers)


def delete_version(name: str, version: int) -> Call[DeletedModelVersion]:
    return Call("DELETE", f"/v1/models/{segment(name)}/versions/{segment(version)}", _one(DeletedModelVersion))


def deploy(name: str, version: int, settings: Mapping[str, Any]) -> Call[DeploymentObject]:
    body = {"version": version, **settings}
    return Call("PUT", f"/v1/models/{segment(name)}/deployment", _one(DeploymentObject), json=body)


def get_deployment(name: str) -> Call[DeploymentObject]:
    return Call("GET", f"/v1/models/{segment(name)}/deployment", _one(DeploymentObject))


def undeploy(name: str) -> Call[None]:
    return Call("DELETE", f"/v1/models/{segment(name)}/deployment", _nothing)


def deployment_stats(window_minutes: int | None) -> Call[DeploymentStatsList]:
    params = _query(window_minutes=window_minutes)
    return Call("GET", "/v1/deployments/stats", _one(DeploymentStatsList), params=params)


# ---------------------------------------------------------------- predictions and webhooks


def create_prediction(
    model: str,
    inputs: list[dict[str, Any]],
    *,
    version: int | None,
    timeout_ms: int | None,
    webhook: str | None,
    webhook_events_filter: Sequence[str] | None,
    idempotency_key: str | None,
    wait_s: float | None,
) -> Call[PredictionObject]:
    body = _query(
        model=model,
        version=version,
        inputs=inputs,
        timeout_ms=timeout_ms,
        webhook=webhook,
        webhook_events_filter=list(webhook_events_filter) if webhook_events_filter is not None else None,
    )
    headers = _creating(idempotency_key, _held(wait_s))
    return Call("POST", "/v1/predictions", _one(PredictionObject), json=body, headers=headers, wait_s=_held(wait_s))


def get_prediction(prediction_id: str, wait_s: float | None = None) -> Call[PredictionObject]:
    held = _held(wait_s)
    return Call(
        "GET", f"/v1/predictions/{segment(prediction_id)}", _one(PredictionObject), headers=_prefer(held), wait_s=held
    )


def cancel_prediction(prediction_id: str) -> Call[PredictionObject]:
    return Call("POST", f"/v1/predictions/{segment(prediction_id)}/cancel", _one(PredictionObject))


def webhook_secret() -> Call[WebhookSecretObject]:
    return Call("GET", "/v1/webhooks/secret", _one(WebhookSecretObject))


def rotate_webhook_secret() -> Call[WebhookSecretObject]:
    return Call("POST", "/v1/webhooks/secret/rotate", _one(WebhookSecretObject), idempotent=False)


def infer_path(model: str, version: int | None) -> str:
    versioned = f"/versions/{segment(version)}" if version is not None else ""
    return f"/v2/models/{segment(model)}{versioned}/infer"
