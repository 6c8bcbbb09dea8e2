"""Every setting of the platform, read from environment variables prefixed ``MAAS_``.

This is the only module that reads the environment. Everything else receives a
``Settings`` object (the API app factory, the Celery app, the CLI, the local stack).

    MAAS_DATABASE_URL      postgresql+psycopg://user@host:5432/maas
    MAAS_BROKER_URL        redis://127.0.0.1:6379/0  or  amqp://guest:guest@127.0.0.1:5672//
    MAAS_S3_ENDPOINT_URL   http://127.0.0.1:8333  (empty: AWS)
    MAAS_S3_ACCESS_KEY / MAAS_S3_SECRET_KEY / MAAS_S3_BUCKET / MAAS_S3_REGION

The service URLs may be left unset: ``maas up`` then starts embedded servers for
them; every other entry point fails with a message naming the missing variable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "MAAS_"
# written by `maas up` under data_dir while it runs: where its embedded services listen
STACK_FILE = "stack.json"
SERVICE_FIELDS = ("database_url", "broker_url", "s3_endpoint_url", "s3_access_key", "s3_secret_key")


class MissingSetting(RuntimeError):
    """A service URL that this entry point needs was not configured."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # services (None: not configured; `maas up` fills them with embedded servers)
    database_url: str | None = None
    broker_url: str | None = None
    s3_endpoint_url: str | None = None
    # the endpoint clients use for presigned URLs, when it differs (e.g. inside docker)
    s3_public_endpoint_url: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    s3_bucket: str = "maas"
    s3_region: str = "us-east-1"

    # API server
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    # the base of the URLs in job objects and webhooks (default: http://api_host:api_port)
    public_url: str | None = None
    log_format: str = Field(default="json", pattern="^(json|text)$")
    metrics_token: str | None = Field(
        default=None,
        repr=False,
        description="a secret: GET /metrics then needs `Authorization: Bearer <it>` (Prometheus' bearer "
        "credentials; tenants' API keys never open it); unset, /metrics answers only clients on loopback",
    )

    # limits
    max_request_body_bytes: int = Field(default=1 << 20, gt=0)
    max_upload_bytes: int = Field(default=1 << 30, gt=0)
    max_dataset_bytes: int = Field(
        default=4 << 30,
        gt=0,
        description="an uploaded dataset may take this much once read (npz: its arrays uncompressed, from their "
        "headers; csv: 8 bytes a value, as float64; parquet: that or its metadata's uncompressed size, the larger); "
        "a compressed upload that claims more is refused with 422",
    )
    max_tensor_elements: int = Field(default=10_000_000, gt=0)
    presigned_url_ttl_s: int = Field(default=900, gt=0, le=7 * 24 * 3600)
    s3_multipart_part_bytes: int = Field(default=8 << 20, ge=5 << 20)
    readiness_timeout_s: float = Field(default=2.0, gt=0)
    api_key_touch_interval_s: int = Field(default=60, ge=0)
    api_key_cache_s: float = Field(
        default=5.0, ge=0, description="an API process trusts a key it checked for this long (0: check every request)"
    )
    idempotency_key_ttl_s: int = Field(default=24 * 3600, ge=24 * 3600)

    max_wait_s: float = Field(default=60.0, ge=0, description="cap of `Prefer: wait=N`")

    # workers and the job runner
    job_type_modules: str = Field(
        default="",
        description="comma-separated modules that add job types to the built-in ones; each exports JOB_TYPES "
        "(a sequence of job_types.base.JobType) and QUEUES (the queues they add)",
    )
    worker_concurrency: int = Field(default=2, gt=0)
    job_max_duration_s: int = Field(default=24 * 3600, gt=0)
    heartbeat_interval_s: float = Field(default=1.0, gt=0)
    heartbeat_timeout_s: float = Field(default=30.0, gt=0)
    reconcile_interval_s: float = Field(default=5.0, gt=0)
    redispatch_after_s: float = Field(default=300.0, gt=0)
    dispatch_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="the job dispatcher passes at least this often (a job created or finished wakes it at once)",
    )
    fair_share_half_life_s: float = Field(
        default=3600.0,
        gt=0,
        description="a tenant's past job-seconds on a queue count half as much after this long (fair share)",
    )
    cancel_grace_s: float = Field(default=10.0, ge=0)
    db_outage_tolerance_s: float = Field(
        default=60.0,
        ge=0,
        description="a running job's writes (progress, events, artifacts, its end) wait this long for PostgreSQL "
        "to come back before they give up",
    )
    preempt_grace_s: float = Field(
        default=60.0,
        ge=0,
        description="after a worker gets SIGTERM, each running job has this long to checkpoint and go back to the "
        "queue before its processes are stopped (then cancel_grace_s more); a pod's terminationGracePeriodSeconds "
        "must cover both",
    )

    # training
    max_nproc_per_node: int = Field(default=8, gt=0, description="torchrun processes a job may ask for per node")
    max_nnodes: int = Field(default=4, gt=0)
    training_threads_per_process: int = Field(default=1, gt=0, description="OMP_NUM_THREADS of each rank")
    training_cuda: bool = Field(
        default=False,
        description="whether the training workers have CUDA GPUs: a spec asking for fp16 mixed precision is "
        "refused (422) without them",
    )
    worker_memory_bytes: int | None = Field(
        default=None,
        gt=0,
        description="the memory a worker counts on for a job's data before starting it; default: what the "
        "machine has available, capped by the container's cgroup memory limit",
    )
    # several nodes: a folder every node's workers see (NFS, EFS...), where the ranks write checkpoints
    training_shared_dir: Path | None = None
    # the address other nodes reach the first node's rendezvous on
    training_rendezvous_host: str = "127.0.0.1"
    training_rendezvous_timeout_s: int = Field(default=300, gt=0)

    # serving: model servers, each its own process (`maas serve`, serving/)
    model_server_host: str = Field(default="127.0.0.1", description="where a model server's data plane listens")
    model_server_port: int = Field(default=0, ge=0, le=65535, description="0: a free port")
    # reachable address written in model_servers.url (default: model_server_host), e.g. the pod IP
    model_server_advertise_host: str | None = None
    inference_threads: int = Field(
        default=0, ge=0, description="ONNX Runtime intra-op threads per model; 0: usable cores // servers per host"
    )
    inference_servers_per_host: int = Field(
        default=1, gt=0, description="model servers sharing this machine's cores (sizes the 0 above)"
    )
    inference_concurrent_batches: int = Field(
        default=2,
        gt=0,
        description="batches of one model running at once (one forms while one runs); above 1, a batch that runs "
        "next to another gets one thread, from a single-threaded copy of the model's session",
    )
    inference_spinning: bool = Field(
        default=True, description="ONNX Runtime's threads spin between ops while a batch runs (faster), never when idle"
    )
    model_server_poll_s: float = Field(default=0.5, gt=0, description="how often a server reads the deployments")
    model_server_heartbeat_s: float = Field(default=1.0, gt=0)
    model_server_timeout_s: float = Field(
        default=5.0, gt=0, description="a server silent for this long is dead: not routed to, then deleted"
    )
    model_load_retry_s: float = Field(default=30.0, gt=0, description="wait before loading a failed version again")
    # serverless serving (serving/placement.py, serving/placer.py, serving/artifact_cache.py)
    model_server_memory_bytes: int = Field(
        default=0,
        ge=0,
        description="memory placement may fill with replicas on this server; 0: half the machine's physical memory "
        "divided by inference_servers_per_host",
    )
    model_server_gpu_memory_bytes: int = Field(
        default=0,
        ge=0,
        description="GPU memory placement may fill with replicas on this server, used only when its "
        "inference_providers include CUDAExecutionProvider; 0: 0.9 of the device's memory (nvidia-smi; no GPU "
        "budget without it) divided by inference_servers_per_host",
    )
    model_cache_dir: Path | None = Field(
        default=None, description="where a model server keeps downloaded model files (default: data_dir/model-cache)"
    )
    model_cache_bytes: int = Field(
        default=4 << 30, ge=0, description="bound of that cache; least recently used files go first (0: no cache)"
    )
    model_memory_factor: float = Field(
        default=5.0,
        gt=0,
        description="a never-loaded version is placed as if it took its .onnx size times this (MiniLM measures "
        "about 2.6 fp32 and 4.5 int8 with its twin session: an estimate above the truth keeps the budget)",
    )
    inference_providers: str | None = Field(
        default=None,
        description="ONNX Runtime execution providers, comma-separated (e.g. CUDAExecutionProvider,"
        "CPUExecutionProvider); default: CUDA when onnxruntime has it, else CPU",
    )
    autoscale_upscale_delay_s: float = Field(
        default=3.0, ge=0, description="in-flight per replica above target this long: add a replica"
    )
    autoscale_downscale_delay_s: float = Field(
        default=30.0, ge=0, description="in-flight per replica well below target this long: remove one (not the last)"
    )
    # serving: the API side (api/inference_router.py, api/prediction_recorder.py)
    routing_refresh_s: float = Field(default=0.5, gt=0, description="how often the API re-reads ready replicas")
    cold_start_max_waiting: int = Field(
        default=1000,
        gt=0,
        description="requests one API process may hold while their deployments have no ready replica; past it 503",
    )
    max_inference_body_bytes: int = Field(default=64 << 20, gt=0, description="body limit of POST /v2/…/infer")
    # serving: the API's gRPC endpoint (api/grpc_server.py), the same router and checks as /v2
    grpc_enabled: bool = Field(default=True, description="serve the OIP gRPC service next to the REST API")
    grpc_host: str | None = Field(default=None, description="where the gRPC service listens (default: api_host)")
    grpc_port: int = Field(default=8081, ge=0, le=65535, description="the gRPC service's port; 0: a free port")
    grpc_max_message_bytes: int = Field(
        default=64 << 20, gt=0, description="largest gRPC request or response; past it, RESOURCE_EXHAUSTED"
    )
    grpc_stop_grace_s: float = Field(
        default=30.0, ge=0, description="on shutdown, calls in flight get this long to finish; new ones are refused"
    )
    api_event_loop: Literal["uvloop", "asyncio"] = Field(
        default="uvloop",
        description="the API process's event loop (REST and gRPC): uvloop spends less CPU per request; asyncio: "
        "the standard library's (also used when uvloop is not installed)",
    )
    prediction_flush_s: float = Field(default=0.5, gt=0, description="recorded requests are inserted this often")
    prediction_flush_rows: int = Field(default=1000, gt=0, description="…or as soon as this many are waiting")
    prediction_buffer_max_rows: int = Field(
        default=100_000, gt=0, description="while Postgres is down; past this the oldest records are dropped"
    )

    # tenant limits (core/quotas.py): each quota_X is the default of quota X; `maas admin tenants set-quota`
    # overrides it per tenant
    quota_queued_jobs: int = Field(
        default=1000, ge=0, description="jobs a tenant may have queued, all types together (waiting costs no worker)"
    )
    quota_running_jobs: int = Field(
        default=4, ge=0, description="jobs of one type a tenant may have running at once (enforced at dispatch)"
    )
    quota_deployments: int = Field(default=10, ge=0, description="deployments a tenant may have")
    quota_replicas: int = Field(default=20, ge=0, description="replicas a tenant's deployments may ask for in all")
    quota_stored_bytes: int = Field(
        default=100 << 30, ge=0, description="bytes a tenant may store: files, artifacts and checkpoints"
    )
    quota_upload_bytes: int = Field(
        default=1 << 30, ge=0, description="largest file a tenant may upload (max_upload_bytes caps it for everyone)"
    )
    quota_inference_per_min: int = Field(
        default=60_000, ge=0, description="inference requests per API key and minute (a token bucket that size)"
    )
    quota_creates_per_min: int = Field(
        default=600, ge=0, description="create calls (POST under /v1) per API key and minute (a token bucket)"
    )
    rate_limits_enabled: bool = Field(default=True, description="off: no rate limit anywhere (benchmarks)")
    rate_limit_lease_s: float = Field(
        default=0.1,
        gt=0,
        description="an API process takes tokens from the shared bucket in leases of this many seconds of refill",
    )
    usage_metering_enabled: bool = Field(default=True, description="off: no usage is recorded (benchmarks)")
    usage_flush_s: float = Field(default=5.0, gt=0, description="how often a process writes its usage counters")
    usage_storage_sample_s: float = Field(
        default=60.0, gt=0, description="how often an API process samples every tenant's stored bytes"
    )

    # webhooks
    webhook_timeout_s: float = Field(default=10.0, gt=0)
    webhook_max_attempts: int = Field(default=8, gt=0)
    webhook_backoff_base_s: float = Field(default=2.0, gt=0)
    webhook_backoff_max_s: float = Field(default=3600.0, gt=0)
    webhook_progress_interval_s: float = Field(default=5.0, ge=0)
    webhook_allow_private_targets: bool = False

    # the embedded local stack
    data_dir: Path = Path.home() / ".maas"

    @property
    def public_base_url(self) -> str:
        return (self.public_url or f"http://{self.api_host}:{self.api_port}").rstrip("/")

    @property
    def shared_training_dir(self) -> Path:
        return (self.training_shared_dir or self.data_dir / "training").expanduser()

    @property
    def model_cache_path(self) -> Path:
        """Where model servers cache model files."""
        return (self.model_cache_dir or self.data_dir / "model-cache").expanduser()

    def require(self, *names: str) -> None:
        """Raise MissingSetting naming every unset variable among ``names``."""
        missing = [ENV_PREFIX + n.upper() for n in names if getattr(self, n) in (None, "")]
        if missing:
            raise MissingSetting(f"{', '.join(missing)} not set: point it at a running service, or run `maas up`")

    def service(self, name: str) -> str:
        """The service URL ``name`` (``database_url``, ``broker_url``…); ``MissingSetting`` when unset."""
        self.require(name)
        return str(getattr(self, name))

    def with_services(self, **urls: str | None) -> Settings:
        """A copy with some service settings replaced (used by the local stack and the tests)."""
        return self.model_copy(update=urls)


def load_settings() -> Settings:
    """Settings from the environment; services left unset are taken from a running ``maas up``."""
    settings = Settings()
    stack_file = settings.data_dir.expanduser() / STACK_FILE
    if stack_file.exists():
        running = json.loads(stack_file.read_text())
        unset = {k: v for k, v in running.items() if k in SERVICE_FIELDS and getattr(settings, k) in (None, "")}
        settings = settings.with_services(**unset)
    return settings


def to_env(settings: Settings) -> dict[str, str]:
    """The MAAS_* variables that reproduce ``settings`` in a child process."""
    return {ENV_PREFIX + name.upper(): str(value) for name, value in settings.model_dump().items() if value is not None}
