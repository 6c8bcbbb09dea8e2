"""End-to-end fixtures: one training and one compression worker per test module, started on first use.

Module-scoped so a module's jobs share a worker while each module starts from a fresh process
(a module that needs a worker of another shape, e.g. the recovery tests, starts its own)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from core.settings import Settings
from tests.support.processes import Worker


def _worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory, queue: str) -> Iterator[Worker]:
    worker = Worker(settings, queue, tmp_path_factory.mktemp(queue) / "worker.log", concurrency=1)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def training_worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker on the training queue."""
    yield from _worker(settings, tmp_path_factory, "training")


@pytest.fixture(scope="module")
def compression_worker(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker on the compression queue."""
    yield from _worker(settings, tmp_path_factory, "compression")
