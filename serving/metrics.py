"""Per-model Prometheus metrics of a model server, fed by each batcher's observer hooks.

Labelled by tenant, model and version; next to them, the server's own serving lifecycle: loads
and unloads by reason, load seconds by step, the replicas it holds per model and state, and the
memory (and GPU memory) they hold against its budgets. The model server serves them at ``GET /metrics`` on its
own port; the API's ``/metrics`` fetches every live server's and re-exports them with a
``model_server`` label (see ``api.serving_metrics``), so one scrape of the API sees them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from serving.batcher import BatcherObserver

LABELS = ("tenant", "model", "version")
REJECT_REASONS = ("queue_full", "timeout", "closed", "invalid")
SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(frozen=True)
class ModelLabels:
    tenant: str
    model: str
    version: str

    def values(self) -> tuple[str, str, str]:
        return (self.tenant, self.model, self.version)

    def __str__(self) -> str:
        return f"model '{self.model}' version {self.version} of {self.tenant}"


class ModelServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "maas_inference_requests", "Requests queued for a model", LABELS, registry=self.registry
        )
        self.queue_seconds = Histogram(
            "maas_inference_queue_seconds",
            "Time a request waited in the batcher's queue",
            LABELS,
            buckets=SECONDS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "maas_inference_batch_size",
            "Rows in each ONNX Runtime call",
            LABELS,
            buckets=BATCH_SIZES,
            registry=self.registry,
        )
        self.run_seconds = Histogram(
            "maas_inference_run_seconds",
            "Duration of each ONNX Runtime call (one batch)",
            LABELS,
            buckets=SECONDS,
            registry=self.registry,
        )
        self.failed_batches = Counter(
            "maas_inference_failed_batches", "ONNX Runtime calls that raised", LABELS, registry=self.registry
        )
        self.rejections = Counter(
            "maas_inference_rejections",
            "Requests refused or dropped before running: queue_full, timeout, closed (unloading), invalid",
            (*LABELS, "reason"),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "maas_inference_queue_depth", "Requests waiting in the batcher's queue", LABELS, registry=self.registry
        )
        self.loads = Counter(
            "maas_replica_loads",
            "Replica loads: reason is the placer's (assign: a replica it needed, scale_up) or retry; result ok|failed",
            ("reason", "result"),
            registry=self.registry,
        )
        self.unloads = Counter(
            "maas_replica_unloads",
            "Replicas unloaded: idle, room (evicted for another), scale_down, version_switch, undeployed, failed",
            ("reason",),
            registry=self.registry,
        )
        self.load_seconds = Histogram(
            "maas_replica_load_seconds",
            "Seconds of each step of a load: download (from S3 or the local cache), session, warmup",
            ("step",),
            buckets=SECONDS,
            registry=self.registry,
        )
        self.replicas = Gauge(
            "maas_replicas", "Replicas held here, by model and state", (*LABELS, "state"), registry=self.registry
        )
        self.memory_held = Gauge(
            "maas_model_server_memory_bytes", "Memory held by this server's replicas (measured)", registry=self.registry
        )
        self.memory_budget = Gauge(
            "maas_model_server_memory_budget_bytes",
            "What placement may fill on this server (MAAS_MODEL_SERVER_MEMORY_BYTES)",
            registry=self.registry,
        )
        self.gpu_memory_held = Gauge(
            "maas_model_server_gpu_memory_bytes",
            "GPU memory held by this server's replicas (measured; 0 without a GPU)",
            registry=self.registry,
        )
        self.gpu_memory_budget = Gauge(
            "maas_model_server_gpu_memory_budget_bytes",
            "What placement may fill on this server's GPU (MAAS_MODEL_SERVER_GPU_MEMORY_BYTES; 0: no GPU)",
            registry=self.registry,
        )

    def observer(self, labels: ModelLabels) -> BatcherObserver:
        return _Observer(self, labels.values())

    def watch_queue(self, labels: ModelLabels, depth: Callable[[], float]) -> None:
        """Read the queue depth when scraped (the batcher may be swapped for a new one meanwhile)."""
        self.queue_depth.labels(*labels.values()).set_function(depth)

    def forget(self, labels: ModelLabels) -> None:
        """Drop an unloaded version's series, so versions that come and go do not pile up."""
        values = labels.values()
        for metric in (
            self.requests,
            self.queue_seconds,
            self.batch_size,
            self.run_seconds,
            self.failed_batches,
            self.queue_depth,
        ):
            with contextlib.suppress(KeyError):
                metric.remove(*values)
        for reason in REJECT_REASONS:
            with contextlib.suppress(KeyError):
                self.rejections.remove(*values, reason)

    def show_holdings(
        self,
        replicas: Iterable[tuple[ModelLabels, str]],
        memory_bytes: int,
        budget_bytes: int,
        gpu_memory_bytes: int,
        gpu_budget_bytes: int,
    ) -> None:
        """What the server holds now: replicas by model and state, their memory and GPU memory, and the budgets."""
        self.replicas.clear()
        for labels, state in replicas:
            self.replicas.labels(*labels.values(), state).inc()
        self.memory_held.set(memory_bytes)
        self.memory_budget.set(budget_bytes)
        self.gpu_memory_held.set(gpu_memory_bytes)
        self.gpu_memory_budget.set(gpu_budget_bytes)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _Observer(BatcherObserver):
    def __init__(self, metrics: ModelServerMetrics, values: tuple[str, str, str]) -> None:
        self._requests = metrics.requests.labels(*values)
        self._queue_seconds = metrics.queue_seconds.labels(*values)
        self._batch_size = metrics.batch_size.labels(*values)
        self._run_seconds = metrics.run_seconds.labels(*values)
        self._failed = metrics.failed_batches.labels(*values)
        self._rejections = metrics.rejections
        self._values = values

    def item_queued(self, queue_depth: int) -> None:
        self._requests.inc()

    def item_dequeued(self, queue_s: float) -> None:
        self._queue_seconds.observe(queue_s)

    def batch_finished(self, rows: int, items: int, run_s: float, failed: bool) -> None:
        self._batch_size.observe(rows)
        self._run_seconds.observe(run_s)
        if failed:
            self._failed.inc()

    def item_rejected(self, reason: str) -> None:
        self._rejections.labels(*self._values, reason).inc()
