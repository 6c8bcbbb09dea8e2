"""The threads that run one model's batches, one lane per batch in flight.

Owns which thread runs a batch and whether that batch is ``crowded`` (another batch of the
same model runs at the same time); knows nothing of HTTP, the database or ONNX Runtime: the
model call is injected (``core.onnx_model.OnnxModel.run``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from serving.batcher import Arrays


class Lanes:
    """The threads that run one model's batches: a batch goes to the free lane with the lowest number.

    The batcher runs up to ``count`` batches at once (one forms while another runs), each on a lane
    of its own; at low load every batch runs on lane 0, so one thread keeps the model's caches warm.
    A batch that starts while another runs is called ``crowded`` (the model then runs it on one
    thread, see ``core.onnx_model.OnnxModel``). While a replaced batcher drains next to its
    successor, a lane may take a second batch.
    """

    def __init__(self, run: Callable[[Arrays, bool], Arrays], count: int, name: str) -> None:
        self._run = run
        self._executors = [ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{lane}") for lane in range(count)]
        self._in_flight = [0] * count

    async def __call__(self, inputs: Arrays) -> Arrays:
        lane = min(range(len(self._executors)), key=self._in_flight.__getitem__)
        crowded = any(self._in_flight)
        self._in_flight[lane] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executors[lane], self._run, inputs, crowded)
        finally:
            self._in_flight[lane] -= 1

    def shutdown(self) -> None:
        for executor in self._executors:
            executor.shutdown(wait=False)
