"""The model server's lanes: which thread runs each batch; no services."""

from __future__ import annotations

import asyncio
import threading

from serving.lanes import Lanes
from tests.support.eventually import eventually_async


class Model:
    """A model call that records its thread and waits until released."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.crowded: list[bool] = []
        self.release = threading.Event()

    def run(self, inputs: dict, crowded: bool) -> dict:
        self.threads.append(threading.current_thread().name)
        self.crowded.append(crowded)
        assert self.release.wait(10)
        return {"y": inputs["x"]}


async def test_at_low_load_every_batch_runs_on_lane_zero():
    model = Model()
    model.release.set()
    lanes = Lanes(model.run, 2, "m")
    try:
        for i in range(5):
            assert await lanes({"x": i}) == {"y": i}
    finally:
        lanes.shutdown()
    assert len(set(model.threads)) == 1 and model.threads[0].startswith("m-0")
    assert model.crowded == [False] * 5


async def test_concurrent_batches_take_the_free_lanes_are_crowded_and_a_third_shares_the_least_busy():
    model = Model()
    lanes = Lanes(model.run, 2, "m")
    try:
        running = [asyncio.ensure_future(lanes({"x": i})) for i in range(3)]

        async def two_started() -> bool:
            return len(model.threads) >= 2

        await eventually_async(two_started, 10, "two batches to start", interval_s=0.01)
        assert sorted(name.split("_")[0] for name in model.threads) == ["m-0", "m-1"]
        assert model.crowded == [False, True]  # the second started while the first ran
        model.release.set()
        assert [r["y"] for r in await asyncio.gather(*running)] == [0, 1, 2]
    finally:
        lanes.shutdown()
    assert len(model.threads) == 3
