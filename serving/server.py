"""A model server: its control loop and its data plane on one event loop, started and stopped together.

Hosting only: it listens on ``model_server_host:model_server_port`` (0: a free port), advertises
``model_server_advertise_host`` (default: the listening host) in its ``model_servers`` row, and
stops gracefully (the control loop drains its replicas before the listener closes). What it does
is the control loop's (``serving.control_loop``) and the data plane's (``serving.data_plane``).
``python -m serving`` (``serving.__main__``) runs one in a process of its own.
"""

from __future__ import annotations

import logging

from aiohttp import web

from core.artifact_store import ArtifactStore
from core.ids import new_id
from core.settings import Settings
from serving.control_loop import ControlLoop
from serving.data_plane import DataPlane
from serving.metrics import ModelServerMetrics
from serving.replica import LoadedReplica

log = logging.getLogger("maas.model_server")

# room for the tensor wire format's header around the largest inference body the API accepts
WIRE_OVERHEAD_BYTES = 1 << 20


class ModelServer:
    """One model server: :meth:`start` registers it and starts listening, :meth:`stop` drains it and leaves."""

    settings: Settings
    id: str
    metrics: ModelServerMetrics
    control: ControlLoop
    data_plane: DataPlane

    def __init__(self, settings: Settings, store: ArtifactStore) -> None:
        self.settings = settings
        self.id = new_id("model_server")
        self.metrics = ModelServerMetrics()
        self.control = ControlLoop(settings, store, self.id, self.metrics)
        self.data_plane = DataPlane(self.id, self.control.replicas, self.metrics)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """Where the data plane listens (empty until started)."""
        return self.control.url

    @property
    def replicas(self) -> dict[str, LoadedReplica]:
        return self.control.replicas

    async def start(self) -> None:
        self.control.open()
        app = self.data_plane.app(self.settings.max_inference_body_bytes + WIRE_OVERHEAD_BYTES)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.model_server_host, self.settings.model_server_port)
        await site.start()
        port = self._runner.addresses[0][1]
        host = self.settings.model_server_advertise_host or self.settings.model_server_host
        await self.control.start(f"http://{f'[{host}]' if ':' in host else host}:{port}")
        log.info("model server %s listening on %s with %d threads per model", self.id, self.url, self.control.threads)

    async def stop(self) -> None:
        """Drain (see ``ControlLoop.stop``), then close the listener and the database engine."""
        await self.control.stop()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.control.close()
        log.info("model server %s stopped", self.id)
