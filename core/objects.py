"""The API's objects, the one definition of what clients receive: responses, webhook bodies, the OpenAPI document.

Each object is read from its ORM row (``model_validate(row, from_attributes=True)``); what the row
does not hold — a name from a join, the public base URL of the links — is handed to ``from_row``.
The routes answer with these models, ``core.jobs`` and ``core.predictions`` send
``model_dump(mode="json")`` of the same models as webhook bodies, and ``api.openapi`` describes
them, so the three cannot drift. Times are RFC 3339 strings in UTC, written by
``core.status_update.rfc3339``. Every field says what it means and its unit: the OpenAPI
document and the SDK show it to users.

Pydantic and core only: no aiohttp here, workers import it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    computed_field,
)

from core.models import ApiKey, Artifact, Deployment, Job, ModelReplica, ModelVersion, Prediction, ServingEvent
from core.models import Model as ModelRow
from core.status_update import rfc3339
from core.webhooks import ROTATION_OVERLAP

# a datetime in, an RFC 3339 UTC string out ("2025-01-02T03:04:05.123456Z"), in JSON and in Python dumps
Timestamp = Annotated[
    datetime,
    PlainSerializer(rfc3339, return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]
Status = Literal["queued", "running", "succeeded", "failed", "canceled"]


class _Row:
    """An ORM row seen with a few more attributes: what a join or the settings add to it."""

    def __init__(self, row: object, **extra: Any):
        self._row, self._extra = row, extra

    def __getattr__(self, name: str) -> Any:
        return self._extra[name] if name in self._extra else getattr(self._row, name)


class ApiObject(BaseModel):
    """A response object, read from ORM rows by attribute."""

    model_config = ConfigDict(from_attributes=True)


# --- jobs ---------------------------------------------------------------------------------


class JobProgress(ApiObject):
    """How far a job is; keys the job reports beyond these (loss, epoch, stage…) follow as they came."""

    model_config = ConfigDict(extra="allow")
    step: int = Field(
        default=0, description="steps done: optimizer steps (training), passes (compression), rows (batch inference)"
    )
    total_steps: int | None = Field(default=None, description="steps in the whole job; null while unknown")

    @computed_field(  # type: ignore[prop-decorator]  # pydantic's documented idiom; mypy rejects decorated properties
        description="step / total_steps, from 0 to 1, rounded to 4 digits; null while total_steps is unknown"
    )
    @property
    def fraction(self) -> float | None:
        return round(self.step / self.total_steps, 4) if self.total_steps else None


class JobUrls(ApiObject):
    get: str = Field(description="GET: this job")
    cancel: str = Field(description="POST: cancel this job")
    events: str = Field(description="GET: this job's events, as a page or as Server-Sent Events")


class JobObject(ApiObject):
    """A training, compression or batch inference job."""

    id: str = Field(description="the job's id (`job_…`)")
    object: Literal["job"] = Field(default="job", description="always `job`")
    type: str = Field(description="the job type: `training`, `compression`, `batch_inference` or another registered")
    status: Status = Field(description="queued → running → succeeded | failed | canceled; the last three are final")
    spec: dict[str, Any] = Field(description="the spec as validated, defaults filled in: what the worker runs")
    progress: JobProgress = Field(description="how far the job is")
    metrics: dict[str, Any] = Field(description="the latest metrics the job reported (losses, accuracy…); by job type")
    result: dict[str, Any] | None = Field(
        description="what the job produced (files, model version, report); null until it succeeded"
    )
    error: dict[str, Any] | None = Field(description="why it failed, as `{code, message}`; null unless failed")
    attempts: int = Field(description="how many times a worker started the job (one whose worker is lost is retried)")
    max_attempts: int = Field(description="starts allowed before a job whose worker keeps being lost fails")
    priority: int = Field(
        default=0, description="the job's place among its tenant's queued jobs: higher starts first, then oldest"
    )
    created_at: Timestamp = Field(description="when the job was created")
    started_at: Timestamp | None = Field(description="when a worker first started it; null while queued")
    finished_at: Timestamp | None = Field(description="when it reached a final status; null before")
    webhook: str | None = Field(description="the URL told of the job's events; null: none")
    webhook_events_filter: list[str] = Field(description="the events sent to `webhook`: start, progress, completed")
    metadata: dict[str, str] = Field(
        validation_alias=AliasChoices("metadata_", "metadata"), description="the client's own labels, as given"
    )
    urls: JobUrls = Field(description="links to this job")

    @classmethod
    def from_row(cls, job: Job, base_url: str) -> JobObject:
        url = f"{base_url}/v1/jobs/{job.id}"
        urls = JobUrls(get=url, cancel=f"{url}/cancel", events=f"{url}/events")
        return cls.model_validate(_Row(job, urls=urls))


class JobEventObject(ApiObject):
    """One thing that happened to a job: a status change, progress, metrics, a log line, a checkpoint."""

    id: str = Field(description="the event's id (`evt_…`); `?after=` and `Last-Event-ID` take it")
    object: Literal["job.event"] = Field(default="job.event", description="always `job.event`")
    created_at: Timestamp = Field(description="when it happened")
    level: str = Field(description="`info`, `warning` or `error`")
    type: str = Field(description="`status`, `progress`, `metrics`, `log`, `cancel_requested`…")
    message: str = Field(description="a line for people")
    data: dict[str, Any] = Field(description="the event's details, by type (the new status, the progress values…)")


class ArtifactObject(ApiObject):
    """A file a job produced (checkpoint, model, report, plot), or a registered model's ONNX file."""

    id: str = Field(description="the artifact's id (`art_…`)")
    object: Literal["artifact"] = Field(default="artifact", description="always `artifact`")
    job_id: str | None = Field(description="the job that produced it; null for a model registered from a file")
    kind: str = Field(description="what it is: `model`, `checkpoint`, `weights`, `report`, `plot`, `predictions`…")
    name: str = Field(description="its file name")
    bytes: int = Field(description="its size, in bytes")
    sha256: str = Field(description="the SHA-256 of its content, hex")
    created_at: Timestamp = Field(description="when it was stored")
    deleted_at: Timestamp | None = Field(
        None,
        description="when its content was deleted from the store (an old checkpoint the job's `checkpoints` "
        "retention let go, `DELETE /v1/artifacts/{id}`, or its model version deleted); null while it can be "
        "downloaded. `GET /v1/artifacts/{id}` of a deleted one is 410",
    )
    deleted_reason: str | None = Field(None, description="why its content was deleted; null while it is kept")


class ArtifactDownload(ArtifactObject):
    """An artifact with a link to download it."""

    download_url: str = Field(description="a presigned GET URL for the content; it expires at `expires_at`")
    expires_at: Timestamp = Field(description="when `download_url` stops working")

    @classmethod
    def from_row(cls, artifact: Artifact, download_url: str, expires_at: datetime) -> ArtifactDownload:
        return cls.model_validate(_Row(artifact, download_url=download_url, expires_at=expires_at))


class DeliveryAttempt(ApiObject):
    """One try at delivering a webhook."""

    model_config = ConfigDict(extra="allow")
    at: str = Field(description="when it was sent (RFC 3339)")
    status_code: int | None = Field(description="the receiver's HTTP status; null when there was no answer")
    error: str | None = Field(description="what went wrong; null when the receiver answered 2xx")
    duration_ms: float = Field(description="how long the try took, in milliseconds")


class WebhookDeliveryObject(ApiObject):
    """One event sent to one webhook URL, with every try."""

    id: str = Field(description="the delivery's id (`msg_…`): the `webhook-id` header, the same on every retry")
    object: Literal["webhook_delivery"] = Field(default="webhook_delivery", description="always `webhook_delivery`")
    event: str = Field(description="the event: `start`, `progress` or `completed`")
    url: str = Field(description="where it is sent")
    status: str = Field(
        description="`pending` (being tried), `delivered`, `disabled` (the receiver answered 410) or `failed` "
        "(out of tries)"
    )
    attempts: list[DeliveryAttempt] = Field(description="every try, oldest first")
    created_at: Timestamp = Field(description="when the event happened")
    next_attempt_at: Timestamp | None = Field(description="when the next try is due; null when no more are")
    delivered_at: Timestamp | None = Field(description="when the receiver accepted it; null until then")


# --- predictions --------------------------------------------------------------------------


class PredictionMetrics(ApiObject):
    queue_ms: float | None = Field(
        description="time waiting in the model server's batching queue, in milliseconds; null until it ran"
    )
    inference_ms: float | None = Field(
        description="time of the model call of the batch it ran in, in milliseconds; null until it ran"
    )


class PredictionUrls(ApiObject):
    get: str = Field(description="GET: this prediction")
    cancel: str = Field(description="POST: cancel this prediction while it is queued")


class PredictionObject(ApiObject):
    """An asynchronous prediction: one request to a deployed model, answered later."""

    id: str = Field(description="the prediction's id (`pred_…`)")
    object: Literal["prediction"] = Field(default="prediction", description="always `prediction`")
    status: Status = Field(description="queued → running → succeeded | failed | canceled; the last three are final")
    model: str = Field(description="the model's name")
    version: int = Field(description="the model version that runs it")
    output: dict[str, Any] | None = Field(
        description="`{outputs: [Open Inference Protocol tensors]}`; null until it succeeded"
    )
    error: dict[str, Any] | None = Field(description="why it failed, as `{code, message}`; null unless failed")
    metrics: PredictionMetrics = Field(description="where its time went")
    created_at: Timestamp = Field(description="when it was created")
    completed_at: Timestamp | None = Field(description="when it reached a final status; null before")
    webhook: str | None = Field(description="the URL told of its events; null: none")
    webhook_events_filter: list[str] = Field(description="the events sent to `webhook`: start, completed")
    urls: PredictionUrls = Field(description="links to this prediction")

    @classmethod
    def from_row(cls, prediction: Prediction, model: str, version: int, base_url: str) -> PredictionObject:
        url = f"{base_url}/v1/predictions/{prediction.id}"
        urls = PredictionUrls(get=url, cancel=f"{url}/cancel")
        # queue_ms and inference_ms are columns of the prediction row itself
        return cls.model_validate(_Row(prediction, model=model, version=version, metrics=prediction, urls=urls))


# --- files, models, deployments -----------------------------------------------------------


class FileObject(ApiObject):
    """An uploaded dataset or model file, validated when it came in."""

    id: str = Field(description="the file's id (`file_…`)")
    object: Literal["file"] = Field(default="file", description="always `file`")
    filename: str = Field(description="its name, as uploaded (last path component)")
    purpose: str = Field(description="`dataset` or `model`")
    format: str = Field(description="`npz`, `csv` or `parquet` for datasets; `onnx` or `safetensors` for models")
    bytes: int = Field(description="its size, in bytes")
    sha256: str = Field(description="the SHA-256 of its content, hex")
    created_at: Timestamp = Field(description="when it was uploaded")
    details: dict[str, Any] = Field(
        description="what validation found: arrays, columns and rows of a dataset; the signature of a model"
    )


class DeletedFile(ApiObject):
    """What `DELETE /v1/files/{id}` answers (OpenAI's shape): the file is gone."""

    id: str = Field(description="the deleted file's id (`file_…`)")
    object: Literal["file"] = Field(default="file", description="always `file`")
    deleted: Literal[True] = Field(default=True, description="always true")


class ModelObject(ApiObject):
    """A named model of the registry: its versions are listed apart."""

    id: str = Field(description="the model's id (`mdl_…`)")
    object: Literal["model"] = Field(default="model", description="always `model`")
    name: str = Field(description="its name, unique in the tenant")
    latest_version: int | None = Field(description="its highest version number; null when it has none")
    created_at: Timestamp = Field(description="when the model was created, with its first version")

    @classmethod
    def from_row(cls, model: ModelRow, latest_version: int | None) -> ModelObject:
        return cls.model_validate(_Row(model, latest_version=latest_version))


class ArtifactRef(ApiObject):
    """The stored ONNX file of a model version."""

    id: str = Field(description="the artifact's id (`art_…`); `GET /v1/artifacts/{id}` downloads it")
    bytes: int = Field(description="its size, in bytes")
    sha256: str = Field(description="the SHA-256 of its content, hex")


class ModelVersionObject(ApiObject):
    """One immutable version of a model: an ONNX file with its signature, metrics and lineage."""

    id: str = Field(description="the version's id (`mv_…`)")
    object: Literal["model_version"] = Field(default="model_version", description="always `model_version`")
    model: str = Field(description="the model's name")
    version: int = Field(description="its number: 1, 2, … in the order registered")
    sha256: str = Field(description="the SHA-256 of the ONNX file, hex")
    signature: dict[str, Any] = Field(description="its inputs and outputs: name, datatype, shape (-1: any size)")
    metrics: dict[str, Any] = Field(description="what its job measured (accuracy, loss…), or what the client gave")
    lineage: dict[str, Any] = Field(description="where it came from: the uploaded file, or the source model and passes")
    artifact: ArtifactRef = Field(description="its ONNX file")
    source_job_id: str | None = Field(description="the job that produced it; null when registered from a file")
    created_at: Timestamp = Field(description="when it was registered")

    @classmethod
    def from_row(cls, version: ModelVersion, model: str, artifact: Artifact) -> ModelVersionObject:
        return cls.model_validate(_Row(version, model=model, artifact=artifact))


class DeletedModelVersion(ApiObject):
    """What `DELETE /v1/models/{name}/versions/{version}` answers: the version is gone, and its number
    is never given to another version."""

    id: str = Field(description="the deleted version's id (`mv_…`)")
    object: Literal["model_version"] = Field(default="model_version", description="always `model_version`")
    model: str = Field(description="the model's name")
    version: int = Field(description="the deleted version's number")
    deleted: Literal[True] = Field(default=True, description="always true")


class ReplicaObject(ApiObject):
    """One model version held by one model server."""

    model_server: str = Field(
        validation_alias=AliasChoices("server_id", "model_server"), description="the model server's id"
    )
    version: int = Field(description="the model version it holds")
    status: Literal["assigned", "loading", "ready", "draining", "failed"] = Field(
        description="assigned (placed on that server) → loading → ready → draining (then gone); "
        "failed when the load did not work"
    )
    error: str | None = Field(description="why the load failed; null otherwise")
    memory_bytes: int | None = Field(
        description="memory it holds on that server, measured when it loaded (an estimate until then)"
    )
    gpu_memory_bytes: int | None = Field(
        description="GPU memory it holds on that server, likewise; 0 on a server without a GPU (null: not counted "
        "when it was placed)"
    )
    in_flight: int = Field(description="requests queued or running on it, as its server last reported")
    last_used_at: Timestamp | None = Field(description="when a request last reached it; null: never")
    evict_reason: str | None = Field(description="why it is being removed (idle, room, scale-in); null otherwise")
    updated_at: Timestamp = Field(description="when its status last changed")

    @classmethod
    def from_row(cls, replica: ModelReplica, version: int) -> ReplicaObject:
        return cls.model_validate(_Row(replica, version=version))


class ServingEventObject(ApiObject):
    """A decision about a deployment's replicas: placed, loaded, evicted, unloaded, scaled, failed."""

    action: Literal["assign", "loaded", "load_failed", "evict", "unloaded", "scale_up", "scale_down", "failed"] = Field(
        description="what happened"
    )
    reason: str = Field(description="why, in words (or how long a load took, and its steps)")
    model_server: str | None = Field(
        validation_alias=AliasChoices("server_id", "model_server"), description="the model server concerned, if one"
    )
    version: int | None = Field(description="the model version concerned, if one")
    created_at: Timestamp = Field(description="when")

    @classmethod
    def from_row(cls, event: ServingEvent, version: int | None) -> ServingEventObject:
        return cls.model_validate(_Row(event, version=version))


class DeploymentObject(ApiObject):
    """A model's deployment: which version serves, with which batching settings, and where it is ready."""

    id: str = Field(description="the deployment's id (`dep_…`)")
    object: Literal["deployment"] = Field(default="deployment", description="always `deployment`")
    model: str = Field(description="the model's name")
    version: int = Field(description="the version it serves")
    model_version_id: str = Field(description="the id of that version (`mv_…`)")
    max_batch_size: int = Field(description="most rows merged into one model call")
    max_queue_delay_us: int = Field(
        description="how long the oldest queued request waits for others to join it, in microseconds"
    )
    max_queue_size: int = Field(description="requests waiting per replica; past it, 503 with Retry-After")
    timeout_ms: int = Field(description="a request still queued after this many milliseconds is dropped (0: never)")
    min_replicas: int = Field(description="replicas always kept (0: scales to zero when idle)")
    max_replicas: int = Field(description="most replicas the autoscaler adds (one per model server at most)")
    target_concurrency: int = Field(description="in-flight requests per replica the autoscaler aims at")
    idle_timeout_s: int = Field(description="a replica above min_replicas without a request for this long unloads")
    cold_start_timeout_ms: int = Field(
        description="how long a request waits for a replica to become ready; past it, 503 with Retry-After"
    )
    status: Literal["pending", "ready", "failed"] = Field(
        description="ready once a live model server serves the deployed version; failed when every server "
        "that tried failed, or when no server can hold it (see status_reason); pending otherwise (also at zero)"
    )
    status_reason: str | None = Field(description="why it is failed when no server can hold it; null otherwise")
    replicas: list[ReplicaObject] = Field(description="every version of the model held by a live model server")
    events: list[ServingEventObject] = Field(
        description="the latest placement, load, unload and scale decisions about its replicas, newest first"
    )
    created_at: Timestamp = Field(description="when the model was first deployed")
    updated_at: Timestamp = Field(description="when the version or the settings last changed")

    @classmethod
    def from_row(
        cls,
        deployment: Deployment,
        *,
        model: str,
        version: int,
        status: str,
        replicas: list[ReplicaObject],
        events: list[ServingEventObject],
    ) -> DeploymentObject:
        return cls.model_validate(
            _Row(
                deployment,
                model=model,
                version=version,
                status=status,
                status_reason=deployment.placement_error,
                replicas=replicas,
                events=events,
            )
        )


class DeploymentStatsObject(BaseModel):
    """One deployment's traffic over the window, from its recorded synchronous predictions."""

    model: str = Field(description="the deployed model's name")
    version: int = Field(description="the version deployed now (the counts cover every version of the model)")
    requests: int = Field(description="synchronous inference requests (REST and gRPC) in the window")
    requests_per_minute: float = Field(description="requests divided by the window's minutes")
    errors: int = Field(description="requests answered with an error (bad input, overload, a failed model call)")
    error_rate: float | None = Field(description="errors / requests, 0 to 1; null without requests")
    latency_p50_ms: float | None = Field(
        description="median time from request to answer of the succeeded requests, in ms, as the API measured it"
    )
    latency_p99_ms: float | None = Field(description="99th percentile of the same, in ms")
    mean_batch_size: float | None = Field(
        description="mean rows of the model call that served each succeeded request (its rows and those of "
        "the requests batched with it)"
    )
    max_batch_size: int | None = Field(description="the most rows of such a model call")


class DeploymentStatsList(BaseModel):
    """The tenant's deployments' traffic over the last ``window_minutes`` (``GET /v1/deployments/stats``)."""

    object: Literal["list"] = Field(default="list", description="always `list`")
    window_minutes: int = Field(description="the window counted")
    since: Timestamp = Field(description="the window's start (its end is the answer's time)")
    data: list[DeploymentStatsObject] = Field(description="one row per deployment, by model name")


# --- the tenant's keys and secrets --------------------------------------------------------


class ApiKeyObject(ApiObject):
    """An API key of the tenant; only its prefix is ever shown again after it was created."""

    id: str = Field(description="the key's id (`key_…`)")
    object: Literal["api_key"] = Field(default="api_key", description="always `api_key`")
    name: str = Field(description="the label given at creation")
    prefix: str = Field(description="the visible start of the key (`maas_ab12cd34`), to tell keys apart")
    created_at: Timestamp = Field(description="when it was created")
    last_used_at: Timestamp | None = Field(description="when it last authenticated a request (roughly); null: never")
    revoked_at: Timestamp | None = Field(description="when it was revoked; null while it works")


class CreatedApiKey(ApiKeyObject):
    """A key just created: the only answer that holds the whole key."""

    key: str = Field(description="the whole key; shown only in this response")

    @classmethod
    def from_row(cls, row: ApiKey, key: str) -> CreatedApiKey:
        return cls.model_validate(_Row(row, key=key))


class WebhookSecretObject(ApiObject):
    """The secret that signs the tenant's webhooks (Standard Webhooks)."""

    object: Literal["webhook_secret"] = Field(default="webhook_secret", description="always `webhook_secret`")
    key: str = Field(
        validation_alias=AliasChoices("secret", "key"),
        description="verify deliveries with this secret (`whsec_…`, Standard Webhooks)",
    )
    created_at: Timestamp = Field(description="when the tenant's first secret was made")
    rotated_at: Timestamp | None = Field(description="when it was last rotated; null: never")

    @computed_field(  # type: ignore[prop-decorator]  # pydantic's documented idiom; mypy rejects decorated properties
        description="after a rotation, deliveries carry a signature with the old key too until then; null: no old key"
    )
    @property
    def previous_key_valid_until(self) -> Timestamp | None:
        return self.rotated_at + ROTATION_OVERLAP if self.rotated_at else None


__all__ = [
    "ApiKeyObject",
    "ArtifactDownload",
    "ArtifactObject",
    "ArtifactRef",
    "CreatedApiKey",
    "DeletedFile",
    "DeletedModelVersion",
    "DeliveryAttempt",
    "DeploymentObject",
    "DeploymentStatsList",
    "DeploymentStatsObject",
    "FileObject",
    "JobEventObject",
    "JobObject",
    "JobProgress",
    "JobUrls",
    "ModelObject",
    "ModelVersionObject",
    "PredictionMetrics",
    "PredictionObject",
    "PredictionUrls",
    "ReplicaObject",
    "Timestamp",
    "WebhookDeliveryObject",
    "WebhookSecretObject",
]
