"""What a model server holds for one model version: :class:`LoadedReplica`.

The control loop (``serving.control_loop``) creates, changes and drops these; the data plane
(``serving.data_plane``) only reads them to find the batcher of a request's version. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.deployments import BatchingSettings
from core.onnx_model import OnnxModel
from serving.batcher import DynamicBatcher
from serving.lanes import Lanes
from serving.metrics import ModelLabels
from serving.plan import Held


@dataclass
class LoadedReplica:
    """A version this server holds, in whatever state it is (``serving.plan``'s statuses)."""

    version_id: str
    model_id: str
    labels: ModelLabels
    status: str
    since: float  # when the status last changed, monotonic seconds
    batching: BatchingSettings | None = None
    model: OnnxModel | None = None
    batcher: DynamicBatcher | None = None
    lanes: Lanes | None = None
    error: str | None = None
    memory_bytes: int | None = None  # measured when it loaded
    gpu_memory_bytes: int | None = None  # the same on the server's GPU (0 on a server without one)
    in_flight: int = 0  # requests the data plane is serving on it now
    last_used: float = 0.0  # when the data plane last took a request for it, monotonic seconds
    reported: tuple[int, float] = (0, 0.0)  # (load, last_used) as the last heartbeat told PostgreSQL
    # requests in flight integrated over time since ``window_start``: the mean concurrency of a window
    # (Little's law), what the autoscaler compares with target_concurrency; a snapshot would mostly see 0
    _area: float = 0.0
    _changed: float = 0.0
    _window_start: float | None = None

    def request_started(self, now: float) -> None:
        self._account(now)
        self.in_flight += 1
        self.last_used = now

    def request_ended(self, now: float) -> None:
        self._account(now)
        self.in_flight -= 1

    def mean_in_flight(self, now: float) -> float:
        """Requests in flight on average since the last call (or since it loaded); starts a new window."""
        self._account(now)
        span = now - (now if self._window_start is None else self._window_start)
        mean = self._area / span if span > 0 else float(self.in_flight)
        self._area, self._window_start = 0.0, now
        return mean

    def _account(self, now: float) -> None:
        if self._window_start is None:
            self._window_start = self._changed = now
        self._area += self.in_flight * (now - self._changed)
        self._changed = now

    def held(self) -> Held:
        return Held(self.version_id, self.model_id, self.status, self.batching, self.since)
