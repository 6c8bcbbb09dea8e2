"""DynamicBatcher against a fake model that records every batch it is handed.

Outputs are computed from the inputs, so a request that got another request's rows back
would fail. Timing is asserted as ordering (what ran, in which batch), and durations only as
lower bounds the test itself sets (a model call that sleeps a known time, a queue delay), never
as upper bounds; waits have generous ceilings so a broken batcher fails instead of hanging.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import numpy as np
import pytest

from serving.batcher import (
    BatcherClosed,
    BatcherCounters,
    BatcherObserver,
    BatchOutputError,
    DynamicBatcher,
    InvalidItem,
    QueueFull,
    QueueTimeout,
    UnrunnableInput,
)
from tests.support.eventually import eventually_async

T = TypeVar("T")
CEILING_S = 10.0
SLOW_S = 0.05  # how long SlowModel's call takes, at least
ROUNDING_S = 1e-6  # a duration computed as (start + delay) - start may come out a float rounding short


async def within(awaitable: Awaitable[T]) -> T:
    return await asyncio.wait_for(awaitable, CEILING_S)


class ModelBroke(RuntimeError):
    pass


class FakeModel:
    """y = 2x + 1 and the row sums; optionally holds each call until released, or fails chosen calls."""

    def __init__(self, *, hold: bool = False, fail_calls: frozenset[int] = frozenset()) -> None:
        self.batches: list[np.ndarray] = []
        self.fail_calls = fail_calls
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.active = 0
        self.max_active = 0

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        call = len(self.batches)
        self.batches.append(inputs["x"].copy())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        self.started.set()
        try:
            await self.release.wait()
        finally:
            self.active -= 1
        if call in self.fail_calls:
            raise ModelBroke(f"call {call} broke")
        return {"y": inputs["x"] * 2 + 1, "sum": inputs["x"].sum(axis=1)}

    @property
    def sizes(self) -> list[int]:
        return [len(batch) for batch in self.batches]

    def saw(self, value: float) -> bool:
        return any((batch == value).any() for batch in self.batches)


class SlowModel:
    """A plain function model (the batcher runs it in a thread) that takes at least ``SLOW_S`` per batch."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.sizes.append(len(inputs["x"]))
        time.sleep(SLOW_S)
        return {"y": inputs["x"] * 2 + 1, "sum": inputs["x"].sum(axis=1)}


def row(value: float, rows: int = 1) -> dict[str, np.ndarray]:
    """A request whose every element identifies it."""
    return {"x": np.full((rows, 2), value, dtype=np.float32)}


def assert_outputs_for(outputs: dict[str, np.ndarray], value: float, rows: int = 1) -> None:
    np.testing.assert_array_equal(outputs["y"], np.full((rows, 2), value * 2 + 1, np.float32))
    np.testing.assert_array_equal(outputs["sum"], np.full(rows, value * 2, np.float32))


def batcher_for(model: Any, **settings: Any) -> DynamicBatcher:
    defaults = {"max_batch_size": 16, "max_queue_delay_us": 1_000, "max_queue_size": 0}
    return DynamicBatcher(model, **(defaults | settings))


async def until_queued(batcher: DynamicBatcher, depth: int) -> None:
    async def queued() -> bool:
        return batcher.queue_depth >= depth

    await eventually_async(queued, CEILING_S, f"{depth} queued requests", interval_s=0)


async def start_batch(batcher: DynamicBatcher, model: FakeModel, *values: float) -> list[asyncio.Future[Any]]:
    """Submit requests and wait until the (held) model is running them."""
    tasks = [asyncio.ensure_future(batcher.submit(row(value))) for value in values]
    await within(model.started.wait())
    return tasks


async def queue_up(batcher: DynamicBatcher, *values: float) -> list[asyncio.Future[Any]]:
    """Submit requests and wait until they are all queued."""
    depth = batcher.queue_depth + len(values)
    tasks = [asyncio.ensure_future(batcher.submit(row(value))) for value in values]
    await until_queued(batcher, depth)
    return tasks


async def test_concurrent_single_row_requests_are_merged_and_split_back() -> None:
    model = FakeModel()
    batcher = batcher_for(model, max_batch_size=16, max_queue_delay_us=50_000)
    results = await within(asyncio.gather(*(batcher.submit(row(i)) for i in range(64))))
    for i, outputs in enumerate(results):
        assert_outputs_for(outputs, i)
    assert len(model.batches) <= 8
    assert max(model.sizes) <= 16
    assert sorted(float(v) for batch in model.batches for v in batch[:, 0]) == list(range(64))


async def test_requests_with_several_rows_are_split_back_by_their_own_sizes() -> None:
    model = FakeModel()
    batcher = batcher_for(model, max_batch_size=8)
    sizes = [1, 3, 2, 2, 4, 1]
    results = await within(asyncio.gather(*(batcher.submit(row(i, n)) for i, n in enumerate(sizes))))
    for i, (outputs, n) in enumerate(zip(results, sizes, strict=True)):
        assert_outputs_for(outputs, i, n)
    assert all(size <= 8 for size in model.sizes)
    assert sum(model.sizes) == sum(sizes)


async def test_a_request_larger_than_max_batch_size_is_refused_and_never_run() -> None:
    model = FakeModel()
    counters = BatcherCounters()
    batcher = batcher_for(model, max_batch_size=4, observer=counters)
    with pytest.raises(InvalidItem, match="5 rows, more than max_batch_size 4"):
        await batcher.submit(row(1, 5))
    assert model.batches == [] and counters.rejected["invalid"] == 1


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ({}, "at least one input"),
        ({"x": np.float32(1)}, "is not a numpy array"),
        ({"x": np.array(1.0)}, "scalar"),
        ({"x": np.ones((2, 2)), "z": np.ones((3, 2))}, "input 'z' has 3 rows but input 'x' has 2"),
        ({"x": np.ones((0, 2))}, "empty batch"),
    ],
)
async def test_requests_that_cannot_be_batched_are_refused(inputs: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidItem, match=words):
        await batcher_for(FakeModel()).submit(inputs)


async def test_a_lone_request_runs_once_the_delay_has_passed() -> None:
    model = FakeModel()
    batcher = batcher_for(model, max_queue_delay_us=20_000)
    assert_outputs_for(await within(batcher.submit(row(7))), 7)
    assert model.sizes == [1]


async def test_requests_within_the_delay_share_one_batch() -> None:
    model = FakeModel()
    batcher = batcher_for(model, max_queue_delay_us=300_000)
    first = asyncio.ensure_future(batcher.submit(row(1)))
    for _ in range(10):
        await asyncio.sleep(0)
    assert model.batches == [], "dispatched before the delay or a full batch"
    second = asyncio.ensure_future(batcher.submit(row(2)))
    results = await within(asyncio.gather(first, second))
    assert model.sizes == [2]
    assert_outputs_for(results[0], 1)
    assert_outputs_for(results[1], 2)


async def test_a_full_batch_leaves_without_waiting_for_the_delay() -> None:
    model = FakeModel()
    batcher = batcher_for(model, max_batch_size=4, max_queue_delay_us=600_000_000)
    results = await within(asyncio.gather(*(batcher.submit(row(i)) for i in range(4))))
    assert model.sizes == [4]
    for i, outputs in enumerate(results):
        assert_outputs_for(outputs, i)


async def test_zero_delay_runs_what_is_queued_right_away() -> None:
    model = FakeModel()
    batcher = batcher_for(model, max_queue_delay_us=0)
    assert_outputs_for(await within(batcher.submit(row(3))), 3)
    assert model.sizes == [1]


async def test_one_batch_runs_at_a_time_and_the_next_forms_meanwhile() -> None:
    model = FakeModel(hold=True)
    batcher = batcher_for(model, max_batch_size=16, max_queue_delay_us=0)
    first = await start_batch(batcher, model, 0)
    rest = await queue_up(batcher, 1, 2, 3, 4, 5)
    for _ in range(10):
        await asyncio.sleep(0)
    assert model.sizes == [1], "a second batch started while the first was running"
    model.release.set()
    results = await within(asyncio.gather(*first, *rest))
    assert model.sizes == [1, 5]
    assert model.max_active == 1
    for i, outputs in enumerate(results):
        assert_outputs_for(outputs, i)


async def test_max_concurrent_batches_lets_batches_overlap() -> None:
    model = FakeModel(hold=True)
    batcher = batcher_for(model, max_batch_size=1, max_queue_delay_us=0, max_concurrent_batches=2)
    tasks = [asyncio.ensure_future(batcher.submit(row(i))) for i in range(3)]

    async def two_running() -> bool:
        return model.active >= 2

    await eventually_async(two_running, CEILING_S, "two batches running at once", interval_s=0)
    assert batcher.queue_depth == 1
    model.release.set()
    await within(asyncio.gather(*tasks))
    assert model.max_active == 2


async def test_a_full_queue_refuses_at_once_and_never_runs_the_request() -> None:
    model = FakeModel(hold=True)
    counters = BatcherCounters()
    batcher = batcher_for(model, max_batch_size=1, max_queue_size=2, max_queue_delay_us=0, observer=counters)
    running = await start_batch(batcher, model, 0)
    queued = await queue_up(batcher, 1, 2)
    with pytest.raises(QueueFull):
        await batcher.submit(row(99))
    model.release.set()
    await within(asyncio.gather(*running, *queued))
    assert not model.saw(99)
    assert counters.rejected["queue_full"] == 1


async def test_a_request_that_times_out_in_the_queue_is_never_run() -> None:
    model = FakeModel(hold=True)
    counters = BatcherCounters()
    batcher = batcher_for(model, max_batch_size=1, max_queue_delay_us=0, observer=counters)
    running = await start_batch(batcher, model, 0)
    with pytest.raises(QueueTimeout):
        await within(batcher.submit(row(99), timeout_ms=20))
    assert batcher.queue_depth == 0
    model.release.set()
    await within(asyncio.gather(*running))
    assert_outputs_for(await within(batcher.submit(row(5), timeout_ms=60_000)), 5)
    assert not model.saw(99)
    assert counters.rejected["timeout"] == 1


async def test_the_default_timeout_applies_unless_the_request_says_0_for_none() -> None:
    model = FakeModel(hold=True)
    batcher = batcher_for(model, max_batch_size=1, max_queue_delay_us=0, default_timeout_ms=20)
    running = await start_batch(batcher, model, 0)
    patient = asyncio.ensure_future(batcher.submit(row(7), timeout_ms=0))
    with pytest.raises(QueueTimeout):
        await within(batcher.submit(row(99)))
    model.release.set()
    await within(asyncio.gather(*running))
    assert_outputs_for(await within(patient), 7)
    assert not model.saw(99)


async def test_an_exception_the_inputs_cannot_cause_reaches_every_request_of_its_batch_and_only_those() -> None:
    model = FakeModel(hold=True, fail_calls=frozenset({0}))
    batcher = batcher_for(model, max_queue_delay_us=0, input_error=lambda exc: not isinstance(exc, ModelBroke))
    doomed = await start_batch(batcher, model, 1, 2, 3)
    fine = await queue_up(batcher, 4, 5)
    model.release.set()
    outcomes = await within(asyncio.gather(*doomed, *fine, return_exceptions=True))
    assert model.sizes == [3, 2]
    assert all(isinstance(outcome, ModelBroke) for outcome in outcomes[:3])
    assert_outputs_for(outcomes[3], 4)
    assert_outputs_for(outcomes[4], 5)


POISON = -1.0


class PoisonModel:
    """y = 2x + 1, but raises (like ONNX Runtime on an index past a table) when any row holds ``POISON``,
    or, with ``fail_merged``, on any call of more than one row; records the values of each call."""

    def __init__(self, *, fail_merged: bool = False) -> None:
        self.fail_merged = fail_merged
        self.calls: list[list[float]] = []

    async def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        self.calls.append(sorted({float(v) for v in x[:, 0]}))
        if (x == POISON).any():
            raise ValueError("Gather: indices element out of data bounds, idx=-1\nsecond line of a log")
        if self.fail_merged and len(x) > 1:
            raise ValueError("cannot run more than one row at once")
        return {"y": x * 2 + 1, "sum": x.sum(axis=1)}


async def submit_together(batcher: DynamicBatcher, *values: float) -> list[Any]:
    """Submit requests that all land in one batch (the delay is long, max_batch_size their number)."""
    return await within(asyncio.gather(*(batcher.submit(row(v)) for v in values), return_exceptions=True))


async def test_a_failed_batch_answers_its_good_requests_and_refuses_the_poisoned_ones() -> None:
    model, counters = PoisonModel(), BatcherCounters()
    batcher = batcher_for(model, max_batch_size=4, max_queue_delay_us=1_000_000, observer=counters)
    outcomes = await submit_together(batcher, 1, POISON, 2, POISON)
    assert model.calls[0] == [POISON, 1, 2]  # one merged call, then each request alone
    assert sorted(map(tuple, model.calls[1:])) == [(POISON,), (POISON,), (1,), (2,)]
    assert_outputs_for(outcomes[0], 1)
    assert_outputs_for(outcomes[2], 2)
    for refused in (outcomes[1], outcomes[3]):
        assert isinstance(refused, UnrunnableInput)
        assert str(refused) == (
            "the model cannot run this input: Gather: indices element out of data bounds, idx=-1 "
            "(inputs sent: 'x' float32 [1, 2])"
        )
        assert isinstance(refused.cause, ValueError)
    assert counters.rejected == {"invalid": 2}
    assert counters.failed_batches == 0  # the client's inputs, not the model, made these calls fail
    assert counters.batches == 5


async def test_a_batch_that_fails_only_when_merged_answers_every_request_one_by_one() -> None:
    model, counters = PoisonModel(fail_merged=True), BatcherCounters()
    batcher = batcher_for(model, max_batch_size=3, max_queue_delay_us=1_000_000, observer=counters)
    outcomes, infos = [], []
    for outcome, info in await within(asyncio.gather(*(batcher.submit_with_info(row(v)) for v in (1, 2, 3)))):
        outcomes.append(outcome)
        infos.append(info)
    assert [len(call) for call in model.calls] == [3, 1, 1, 1]
    for value, outputs in zip((1, 2, 3), outcomes, strict=True):
        assert_outputs_for(outputs, value)
    assert len({info.number for info in infos}) == 3 and {(info.rows, info.items) for info in infos} == {(1, 1)}
    assert not counters.rejected
    assert counters.failed_batches == 1  # the batching failed, which no client caused


async def test_a_single_request_batch_that_fails_is_refused_without_running_again() -> None:
    model, counters = PoisonModel(), BatcherCounters()
    batcher = batcher_for(model, max_queue_delay_us=0, observer=counters)
    with pytest.raises(UnrunnableInput, match="the model cannot run this input: Gather"):
        await within(batcher.submit(row(POISON)))
    assert model.calls == [[POISON]]
    assert counters.rejected == {"invalid": 1} and counters.failed_batches == 0
    assert_outputs_for(await within(batcher.submit(row(5))), 5)


async def test_a_request_that_fails_alone_for_a_server_reason_gets_that_error() -> None:
    calls = []

    async def broken_alone(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        calls.append(len(inputs["x"]))
        raise ValueError("bad input") if len(calls) == 1 else ModelBroke("the session is gone")

    batcher = batcher_for(
        broken_alone, max_batch_size=2, max_queue_delay_us=1_000_000, input_error=lambda e: isinstance(e, ValueError)
    )
    outcomes = await submit_together(batcher, 1, 2)
    assert calls == [2, 1, 1]
    assert all(isinstance(outcome, ModelBroke) for outcome in outcomes)


async def test_outputs_that_cannot_be_split_fail_their_batch() -> None:
    async def wrong_rows(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"y": np.zeros((1, 2))}

    batcher = batcher_for(wrong_rows, max_queue_delay_us=0)
    outcomes = await within(asyncio.gather(*(batcher.submit(row(i)) for i in range(3)), return_exceptions=True))
    assert all(isinstance(outcome, BatchOutputError) for outcome in outcomes)
    assert "output 'y'" in str(outcomes[0])


async def test_a_plain_function_runs_off_the_event_loop_thread() -> None:
    threads: list[int] = []

    def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        threads.append(threading.get_ident())
        return {"y": inputs["x"] * 2 + 1, "sum": inputs["x"].sum(axis=1)}

    batcher = batcher_for(run)
    results = await within(asyncio.gather(*(batcher.submit(row(i)) for i in range(5))))
    for i, outputs in enumerate(results):
        assert_outputs_for(outputs, i)
    assert threads and threading.get_ident() not in threads


async def test_requests_that_differ_beyond_the_batch_dim_are_not_merged() -> None:
    model = FakeModel()
    batcher = batcher_for(model, max_queue_delay_us=0)
    narrow, wide = {"x": np.ones((1, 2), np.float32)}, {"x": np.ones((1, 3), np.float32)}
    results = await within(asyncio.gather(batcher.submit(narrow), batcher.submit(wide), batcher.submit(narrow)))
    assert sorted(batch.shape for batch in model.batches) == [(1, 3), (2, 2)]
    assert [r["y"].shape for r in results] == [(1, 2), (1, 3), (1, 2)]


async def test_drain_finishes_the_queued_requests_and_takes_no_new_ones() -> None:
    model = FakeModel(hold=True)
    batcher = batcher_for(model, max_batch_size=2, max_queue_delay_us=600_000_000)
    first = await start_batch(batcher, model, 0, 1)
    queued = await queue_up(batcher, 2, 3, 4)
    drained = asyncio.ensure_future(batcher.drain())
    await asyncio.sleep(0)
    assert not batcher.accepting
    with pytest.raises(BatcherClosed):
        await batcher.submit(row(99))
    model.release.set()
    await within(drained)
    results = [task.result() for task in first + queued]
    for i, outputs in enumerate(results):
        assert_outputs_for(outputs, i)
    assert model.sizes == [2, 2, 1], "the last request waited for its delay instead of being flushed"
    assert not model.saw(99)


async def test_close_fails_queued_requests_but_lets_the_running_batch_finish() -> None:
    model = FakeModel(hold=True)
    batcher = batcher_for(model, max_batch_size=1, max_queue_delay_us=0)
    [running] = await start_batch(batcher, model, 0)
    [queued] = await queue_up(batcher, 99)
    closing = asyncio.ensure_future(batcher.close())
    with pytest.raises(BatcherClosed):
        await within(queued)
    model.release.set()
    await within(closing)
    assert_outputs_for(running.result(), 0)
    assert not model.saw(99)


async def test_a_cancelled_request_leaves_the_queue_and_is_never_run() -> None:
    model = FakeModel(hold=True)
    batcher = batcher_for(model, max_batch_size=1, max_queue_delay_us=0)
    [running] = await start_batch(batcher, model, 0)
    [abandoned] = await queue_up(batcher, 99)
    abandoned.cancel()
    with pytest.raises(asyncio.CancelledError):
        await abandoned
    assert batcher.queue_depth == 0
    model.release.set()
    await within(running)
    await within(batcher.drain())
    assert not model.saw(99)


async def test_counters_see_queue_time_batches_and_rows() -> None:
    counters = BatcherCounters()
    model = SlowModel()
    batcher = batcher_for(model, max_batch_size=4, max_queue_delay_us=0, observer=counters)
    await within(asyncio.gather(*(batcher.submit(row(i)) for i in range(6))))
    assert counters.queued == 6
    assert counters.rows == 6
    assert counters.batches == 2 and model.sizes == [4, 2]
    assert counters.failed_batches == 0
    # the last two requests waited in the queue while the first batch ran its slow call
    assert counters.queue_s_total >= 2 * SLOW_S
    # and each of the two batches took at least the slow call
    assert counters.run_s_total >= 2 * SLOW_S


async def test_info_names_the_batch_each_request_rode_in_and_its_times() -> None:
    delay_s = 0.05
    batcher = batcher_for(SlowModel(), max_batch_size=4, max_queue_delay_us=int(delay_s * 1_000_000))
    together = await within(asyncio.gather(*(batcher.submit_with_info(row(v)) for v in (1.0, 2.0, 3.0))))
    _, alone = await within(batcher.submit_with_info(row(5.0)))
    numbers = {info.number for _, info in together}
    assert len(numbers) == 1 and alone.number not in numbers
    assert all(info.rows == info.items == 3 for _, info in together)
    assert alone.rows == alone.items == 1
    # one batch, one run time, and it covers the slow model call; so does the lone request's
    assert len({info.run_s for _, info in together}) == 1
    assert together[0][1].run_s >= SLOW_S and alone.run_s >= SLOW_S
    # a batch that is not full leaves once its oldest request has waited the whole queue delay
    assert together[0][1].queue_s >= delay_s - ROUNDING_S and alone.queue_s >= delay_s - ROUNDING_S
    assert_outputs_for(together[2][0], 3.0)


async def test_a_failing_observer_does_not_break_batching() -> None:
    class Broken(BatcherObserver):
        def item_queued(self, queue_depth: int) -> None:
            raise RuntimeError("metrics backend down")

        def batch_finished(self, rows: int, items: int, run_s: float, failed: bool) -> None:
            raise RuntimeError("metrics backend down")

    batcher = batcher_for(FakeModel(), observer=Broken())
    assert_outputs_for(await within(batcher.submit(row(4))), 4)


@pytest.mark.parametrize(
    "settings",
    [
        {"max_batch_size": 0},
        {"max_queue_delay_us": -1},
        {"max_queue_size": -1},
        {"max_concurrent_batches": 0},
        {"default_timeout_ms": -5},
    ],
)
def test_settings_are_checked(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        batcher_for(FakeModel, **settings)
