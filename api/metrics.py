"""Prometheus metrics of the API process, served at ``/metrics``.

One registry per app (so tests can build several apps in one process). Routes are
labelled by their template (``/v1/files/{id}``), never by the raw path.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
COLD_START_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60, 120)


class ApiMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "maas_http_requests_total",
            "HTTP requests answered, by route template, method and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "maas_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Counter(
            "maas_api_inference_requests_total",
            "Synchronous inference requests answered, by transport (http, grpc) and outcome (ok or the error code "
            "they are recorded with)",
            ["transport", "outcome"],
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "maas_grpc_requests_total",
            "gRPC calls answered, by method and status code",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_latency = Histogram(
            "maas_grpc_request_duration_seconds",
            "Time to answer a gRPC call, by method",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cold_start = Histogram(
            "maas_cold_start_seconds",
            "Requests held while their deployment had no ready replica: time from arrival to being sent to "
            "the replica that loaded, by transport",
            ["transport"],
            buckets=COLD_START_BUCKETS,
            registry=self.registry,
        )
        self.upload_bytes = Counter(
            "maas_upload_bytes_total", "Bytes accepted through POST /v1/files", registry=self.registry
        )

        self.jobs = Gauge("maas_jobs", "Jobs by type and status", ["type", "status"], registry=self.registry)
        self.jobs_waiting = Gauge(
            "maas_jobs_waiting",
            "Queued jobs the dispatcher has not sent to the broker yet (no free slot, or not their tenant's turn), "
            "by type; counted in maas_jobs{status=queued} too",
            ["type"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "maas_queue_depth", "Messages waiting in each broker queue", ["queue"], registry=self.registry
        )

    def set_job_counts(self, rows: list[tuple[str, str, int]]) -> None:
        self.jobs.clear()
        for type_, status, count in rows:
            self.jobs.labels(type_, status).set(count)

    def set_waiting_jobs(self, rows: list[tuple[str, int]]) -> None:
        self.jobs_waiting.clear()
        for type_, count in rows:
            self.jobs_waiting.labels(type_).set(count)

    def set_queue_depths(self, depths: dict[str, int]) -> None:
        for queue, depth in depths.items():
            self.queue_depth.labels(queue).set(depth)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def count_inference(self, transport: str, outcome: str) -> None:
        self.inference.labels(transport, outcome).inc()

    def observe_cold_start(self, transport: str, seconds: float) -> None:
        self.cold_start.labels(transport).observe(seconds)

    def observe_grpc(self, method: str, code: str, seconds: float) -> None:
        self.grpc_requests.labels(method, code).inc()
        self.grpc_latency.labels(method).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
