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
    in_flight: int = 0  # requests the data plane is serving on it now
    last_used: float = 0.0  # when the data plane last took a request for it, monotonic seconds
    reported: tuple[int, float] = (0, 0.0)  # (in_flight, last_used) as the last heartbeat told PostgreSQL

    def held(self) -> Held:
        return Held(self.version_id, self.model_id, self.status, self.batching, self.since)
