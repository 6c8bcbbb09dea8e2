"""Dynamic batching of inference requests, with Triton's dynamic batcher semantics.

Owns the queue between concurrent requests and one model: requests are merged along
axis 0 into batches of at most ``max_batch_size`` rows, a batch leaves as soon as it is
full or its oldest request has waited ``max_queue_delay_us``, and the outputs are split
back per request. It also owns the queue's back-pressure (``QueueFull`` past
``max_queue_size``), queue timeouts (an expired request is dropped, never run) and the
drain used to switch model versions without dropping requests.

Pure asyncio and numpy: the model call is injected and it knows nothing of HTTP, ONNX
or Prometheus; stats leave through a :class:`BatcherObserver`.

    batcher = DynamicBatcher(session_run, max_batch_size=16, max_queue_delay_us=2_000, max_queue_size=256)
    outputs = await batcher.submit({"x": array_with_batch_dim})
    outputs, info = await batcher.submit_with_info({"x": array_with_batch_dim})  # which batch, how long
    await batcher.drain()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]
# The model call: batched inputs in, batched outputs out (every output keeps the batch on axis 0).
RunBatch = Callable[[Arrays], Awaitable[Mapping[str, np.ndarray]]] | Callable[[Arrays], Mapping[str, np.ndarray]]
# numbers every batch of every batcher in the process, so a batch can be named in records
_BATCH_NUMBERS = itertools.count(1)


class BatcherError(Exception):
    """Base of the batcher's own errors."""


class QueueFull(BatcherError):
    """``max_queue_size`` requests are already waiting; answer 503 with Retry-After."""


class QueueTimeout(BatcherError):
    """The request's timeout passed while it was still queued; it was never run."""


class BatcherClosed(BatcherError):
    """The batcher is draining or closed and takes no new requests."""


class InvalidItem(BatcherError, ValueError):
    """The request cannot be batched (no batch dimension, more rows than max_batch_size…)."""


class BatchOutputError(BatcherError):
    """The model's outputs cannot be split back per request."""


class UnrunnableInput(BatcherError):
    """The model failed on this request run alone: its content made it fail (the client's error, not the server's).

    When a batch's model call fails, each of its requests runs alone to find which ones caused it;
    the message names the model's error (first line) and the inputs the request sent, ``cause`` is
    the model's exception.
    """

    def __init__(self, message: str, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


class BatcherObserver:
    """Stats hooks, called on the event loop; the defaults do nothing. Hooks must be quick."""

    def item_queued(self, queue_depth: int) -> None:
        """A request entered the queue, which now holds ``queue_depth`` requests."""

    def item_dequeued(self, queue_s: float) -> None:
        """A request left the queue for a batch after waiting ``queue_s`` seconds."""

    def batch_finished(self, rows: int, items: int, run_s: float, failed: bool) -> None:
        """A batch of ``rows`` rows from ``items`` requests ran for ``run_s`` seconds."""

    def item_rejected(self, reason: str) -> None:
        """A request was refused or dropped: ``queue_full``, ``timeout``, ``closed`` or ``invalid`` (also: the model
        cannot run its content, :class:`UnrunnableInput`)."""


@dataclass
class BatcherCounters(BatcherObserver):
    """An observer that only counts; handy in tests and as a model for the Prometheus one."""

    queued: int = 0
    batches: int = 0
    rows: int = 0
    failed_batches: int = 0
    queue_s_total: float = 0.0
    run_s_total: float = 0.0
    rejected: Counter[str] = field(default_factory=Counter)

    def item_queued(self, queue_depth: int) -> None:
        self.queued += 1

    def item_dequeued(self, queue_s: float) -> None:
        self.queue_s_total += queue_s

    def batch_finished(self, rows: int, items: int, run_s: float, failed: bool) -> None:
        self.batches += 1
        self.rows += rows
        self.failed_batches += failed
        self.run_s_total += run_s

    def item_rejected(self, reason: str) -> None:
        self.rejected[reason] += 1


@dataclass(frozen=True)
class BatchInfo:
    """How one request was served: the batch it ran in (``number`` is unique in the process) and its times."""

    number: int
    rows: int
    items: int
    queue_s: float
    run_s: float


@dataclass(eq=False)
class _Item:
    inputs: Arrays
    rows: int
    key: tuple[Any, ...]
    future: asyncio.Future[Arrays]
    enqueued_at: float
    queued: bool = True
    expiry: asyncio.TimerHandle | None = None
    dequeued_at: float = 0.0
    info: BatchInfo | None = None


class DynamicBatcher:
    """Merges concurrent :meth:`submit` calls into batches for one model.

    ``run_batch`` may be a coroutine function or a plain function; a plain one runs in
    ``executor`` (the loop's default when None) so the event loop never blocks on the model.
    Only requests whose inputs agree on names, dtypes and every dimension but the first
    are merged. Timeouts are in milliseconds, 0 or None meaning none (Triton's 0).

    A failed model call does not fail its whole batch: when ``input_error`` says the exception may
    come from the inputs' content (None: any exception may), each request of a batch of several runs
    alone; those that succeed get their outputs, those that fail alone get :class:`UnrunnableInput`
    (counted as ``invalid`` rejections, not as failed batches). A batch whose every request succeeds
    alone failed because of the batching itself: those requests get their outputs all the same.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int,
        max_queue_delay_us: int,
        max_queue_size: int,
        default_timeout_ms: int | None = None,
        max_concurrent_batches: int = 1,
        observer: BatcherObserver | None = None,
        executor: Executor | None = None,
        input_error: Callable[[Exception], bool] | None = None,
    ) -> None:
        _require(max_batch_size >= 1, "max_batch_size must be at least 1")
        _require(max_queue_delay_us >= 0, "max_queue_delay_us must not be negative")
        _require(max_queue_size >= 0, "max_queue_size must not be negative (0: unbounded)")
        _require(max_concurrent_batches >= 1, "max_concurrent_batches must be at least 1")
        _require((default_timeout_ms or 0) >= 0, "default_timeout_ms must not be negative")
        self.max_batch_size = max_batch_size
        self.max_queue_size = max_queue_size
        self.max_concurrent_batches = max_concurrent_batches
        self._delay_s = max_queue_delay_us / 1_000_000
        self._default_timeout_ms = default_timeout_ms
        self._run = _as_coroutine_function(run_batch, executor)
        self._observer = observer or BatcherObserver()
        self._input_error = input_error or (lambda exc: True)
        self._queue: deque[_Item] = deque()
        self._running: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._scheduler: asyncio.Task[None] | None = None
        self._accepting = True
        self._flushing = False

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running_batches(self) -> int:
        return len(self._running)

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def submit(self, inputs: Mapping[str, np.ndarray], timeout_ms: int | None = None) -> Arrays:
        """Queue one request (every input with the same leading batch dim) and return its outputs.

        Raises :class:`QueueFull` at once when the queue is full, :class:`QueueTimeout` when
        ``timeout_ms`` (default: ``default_timeout_ms``) passes before it is batched,
        :class:`InvalidItem`, :class:`BatcherClosed`, :class:`UnrunnableInput` when the model fails on
        this request alone, or whatever ``run_batch`` raised.
        """
        outputs, _ = await self.submit_with_info(inputs, timeout_ms)
        return outputs

    async def submit_with_info(
        self, inputs: Mapping[str, np.ndarray], timeout_ms: int | None = None
    ) -> tuple[Arrays, BatchInfo]:
        """Like :meth:`submit`, and also say which batch served the request and how long it queued and ran."""
        if not self._accepting:
            self._notify(self._observer.item_rejected, "closed")
            raise BatcherClosed("the model is being unloaded and takes no new requests")
        rows, key = self._check_item(inputs)
        if self.max_queue_size and len(self._queue) >= self.max_queue_size:
            self._notify(self._observer.item_rejected, "queue_full")
            raise QueueFull(f"{len(self._queue)} requests are already queued for this model; retry later")
        item = self._enqueue(inputs, rows, key, self._timeout_s(timeout_ms))
        try:
            outputs = await item.future
            assert item.info is not None  # set before the future is resolved
            return outputs, item.info
        except asyncio.CancelledError:
            # The caller went away: a queued request must not cost a model run.
            if item.queued:
                self._unqueue(item)
            raise

    async def drain(self) -> None:
        """Stop taking requests, run everything already queued (without waiting for the delay), and wait."""
        self._accepting = False
        self._flushing = True
        await self._wait_idle()

    async def close(self) -> None:
        """Stop taking requests, fail the queued ones with :class:`BatcherClosed`, and wait for running batches."""
        self._accepting = False
        for item in list(self._queue):
            self._unqueue(item)
            _settle(item.future, exception=BatcherClosed("the model was unloaded before this request ran"))
            self._notify(self._observer.item_rejected, "closed")
        await self._wait_idle()

    # ------------------------------------------------------------ queue

    def _check_item(self, inputs: Mapping[str, np.ndarray]) -> tuple[int, tuple[Any, ...]]:
        try:
            rows = _rows_of(inputs)
        except InvalidItem:
            self._notify(self._observer.item_rejected, "invalid")
            raise
        if rows > self.max_batch_size:
            self._notify(self._observer.item_rejected, "invalid")
            raise InvalidItem(
                f"the request has {rows} rows, more than max_batch_size {self.max_batch_size}; send smaller requests"
            )
        key = tuple((name, array.dtype.str, array.shape[1:]) for name, array in sorted(inputs.items()))
        return rows, key

    def _timeout_s(self, timeout_ms: int | None) -> float | None:
        if timeout_ms is None:
            timeout_ms = self._default_timeout_ms
        if timeout_ms is not None and timeout_ms < 0:
            raise ValueError("timeout_ms must not be negative")
        return timeout_ms / 1000 if timeout_ms else None

    def _enqueue(
        self, inputs: Mapping[str, np.ndarray], rows: int, key: tuple[Any, ...], timeout_s: float | None
    ) -> _Item:
        loop = asyncio.get_running_loop()
        item = _Item(dict(inputs), rows, key, loop.create_future(), loop.time())
        if timeout_s is not None:
            item.expiry = loop.call_later(timeout_s, self._expire, item, timeout_s)
        self._queue.append(item)
        self._notify(self._observer.item_queued, len(self._queue))
        if self._scheduler is None or self._scheduler.done():
            self._scheduler = loop.create_task(self._schedule(), name="dynamic-batcher")
        self._wakeup.set()
        return item

    def _unqueue(self, item: _Item) -> None:
        self._queue.remove(item)
        item.queued = False
        if item.expiry is not None:
            item.expiry.cancel()
        self._wakeup.set()

    def _expire(self, item: _Item, timeout_s: float) -> None:
        if not item.queued:
            return
        self._unqueue(item)
        _settle(item.future, exception=QueueTimeout(f"not scheduled within its {timeout_s * 1000:g} ms timeout"))
        self._notify(self._observer.item_rejected, "timeout")

    # ------------------------------------------------------------ scheduling

    async def _schedule(self) -> None:
        try:
            # Runs while anything is queued; the next submit starts a new one, so an idle
            # batcher holds no task.
            while self._queue:
                self._wakeup.clear()
                wait_s = self._dispatch_ready()
                if wait_s == 0:
                    continue
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await self._wakeup.wait()
        except asyncio.CancelledError:
            self._fail_queued(BatcherClosed("the batcher was cancelled"))
            raise
        except Exception as exc:
            log.exception("dynamic batcher scheduler failed")
            self._fail_queued(exc)

    def _dispatch_ready(self) -> float | None:
        """Dispatch one batch if one is due: 0 when it did, else how long to sleep (None: until woken)."""
        if not self._queue or len(self._running) >= self.max_concurrent_batches:
            return None
        batch, full = self._next_batch()
        loop = asyncio.get_running_loop()
        due = batch[0].enqueued_at + self._delay_s
        if full or self._flushing or loop.time() >= due:
            self._dispatch(batch)
            return 0
        return due - loop.time()

    def _next_batch(self) -> tuple[list[_Item], bool]:
        """The oldest request and the queued requests that can join it, and whether that batch is full."""
        oldest = self._queue[0]
        batch: list[_Item] = []
        rows = 0
        for item in self._queue:
            if item.key != oldest.key:
                continue
            if rows + item.rows > self.max_batch_size:
                return batch, True
            batch.append(item)
            rows += item.rows
        return batch, rows == self.max_batch_size

    def _dispatch(self, batch: list[_Item]) -> None:
        now = asyncio.get_running_loop().time()
        for item in batch:
            self._unqueue(item)
            item.dequeued_at = now
            self._notify(self._observer.item_dequeued, now - item.enqueued_at)
        task = asyncio.get_running_loop().create_task(self._run_batch(batch), name="dynamic-batch")
        self._running.add(task)
        task.add_done_callback(self._batch_done)

    def _batch_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        self._wakeup.set()

    async def _run_batch(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        rows = [item.rows for item in batch]
        started = loop.time()
        try:
            try:
                outputs = await self._run(_concatenate(batch))
            except Exception as exc:
                if not self._input_error(exc):
                    raise
                await self._isolate(batch, exc, loop.time() - started)
                return
            results = _split(outputs, rows)
        except asyncio.CancelledError:
            self._fail_batch(batch, BatcherClosed("the batcher was cancelled while this request ran"))
            raise
        except Exception as exc:
            self._fail_batch(batch, exc)
            self._notify(self._observer.batch_finished, sum(rows), len(batch), loop.time() - started, True)
            return
        run_s = loop.time() - started
        number = next(_BATCH_NUMBERS)
        for item, result in zip(batch, results, strict=True):
            item.info = BatchInfo(number, sum(rows), len(batch), item.dequeued_at - item.enqueued_at, run_s)
            _settle(item.future, result=result)
        self._notify(self._observer.batch_finished, sum(rows), len(batch), run_s, False)

    async def _isolate(self, batch: list[_Item], exc: Exception, run_s: float) -> None:
        """The model call of ``batch`` raised ``exc``: find which requests made it fail by running each alone.

        Runs one after another in this batch's slot (so ``max_concurrent_batches`` still holds), on
        the same model call; a request whose caller went away is not run.
        """
        rows = sum(item.rows for item in batch)
        if len(batch) == 1:
            self._notify(self._observer.batch_finished, rows, 1, run_s, False)
            self._reject(batch[0], exc)
            return
        loop = asyncio.get_running_loop()
        any_rejected = False
        for item in batch:
            if item.future.done():
                continue
            started = loop.time()
            try:
                result = _split(await self._run(dict(item.inputs)), [item.rows])[0]
            except Exception as alone:
                alone_s = loop.time() - started
                if isinstance(alone, BatchOutputError) or not self._input_error(alone):
                    _settle(item.future, exception=alone)
                    self._notify(self._observer.batch_finished, item.rows, 1, alone_s, True)
                    continue
                any_rejected = True
                self._notify(self._observer.batch_finished, item.rows, 1, alone_s, False)
                self._reject(item, alone)
                continue
            alone_s = loop.time() - started
            item.info = BatchInfo(next(_BATCH_NUMBERS), item.rows, 1, item.dequeued_at - item.enqueued_at, alone_s)
            _settle(item.future, result=result)
            self._notify(self._observer.batch_finished, item.rows, 1, alone_s, False)
        # the merged call failed because of its content when a request fails alone, else because of the batching
        log.log(
            logging.INFO if any_rejected else logging.WARNING,
            "a batch of %d requests failed (%s: %s); ran each alone",
            len(batch),
            type(exc).__name__,
            _first_line(exc),
        )
        self._notify(self._observer.batch_finished, rows, len(batch), run_s, not any_rejected)

    def _reject(self, item: _Item, exc: Exception) -> None:
        self._notify(self._observer.item_rejected, "invalid")
        sent = ", ".join(f"'{name}' {array.dtype} {list(array.shape)}" for name, array in item.inputs.items())
        message = f"the model cannot run this input: {_first_line(exc)} (inputs sent: {sent})"
        _settle(item.future, exception=UnrunnableInput(message, exc))

    def _fail_batch(self, batch: list[_Item], exc: BaseException) -> None:
        for item in batch:
            _settle(item.future, exception=exc)

    def _fail_queued(self, exc: BaseException) -> None:
        for item in list(self._queue):
            self._unqueue(item)
            _settle(item.future, exception=exc)

    async def _wait_idle(self) -> None:
        self._wakeup.set()
        # asyncio.wait, unlike awaiting the tasks, leaves them running if our caller is cancelled.
        if self._scheduler is not None:
            await asyncio.wait({self._scheduler})
        if self._running:
            await asyncio.wait(set(self._running))

    def _notify(self, hook: Callable[..., None], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            log.exception("dynamic batcher observer hook %s failed", getattr(hook, "__name__", hook))


def _first_line(exc: BaseException, limit: int = 1000) -> str:
    """The first non-blank line of an exception's message, trimmed (ONNX Runtime's can run on with a log)."""
    line = next((line.strip() for line in str(exc).splitlines() if line.strip()), "") or type(exc).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _as_coroutine_function(
    run_batch: RunBatch, executor: Executor | None
) -> Callable[[Arrays], Awaitable[Mapping[str, np.ndarray]]]:
    if inspect.iscoroutinefunction(run_batch) or inspect.iscoroutinefunction(type(run_batch).__call__):
        return run_batch  # type: ignore[return-value]  # checked above: calling it returns an awaitable

    async def in_thread(inputs: Arrays) -> Mapping[str, np.ndarray]:
        result: Awaitable[Mapping[str, np.ndarray]] | Mapping[str, np.ndarray]  # run_batch is sync or async
        result = await asyncio.get_running_loop().run_in_executor(executor, run_batch, inputs)
        return await result if inspect.isawaitable(result) else result

    return in_thread


def _rows_of(inputs: Mapping[str, np.ndarray]) -> int:
    if not isinstance(inputs, Mapping) or not inputs:
        raise InvalidItem("a request needs at least one input array")
    first_name, rows = None, 0
    for name, array in inputs.items():
        if not isinstance(array, np.ndarray):
            raise InvalidItem(f"input '{name}' is not a numpy array")
        if array.ndim == 0:
            raise InvalidItem(f"input '{name}' is a scalar; batched inputs need a leading batch dimension")
        if first_name is None:
            first_name, rows = name, array.shape[0]
        elif array.shape[0] != rows:
            raise InvalidItem(
                f"input '{name}' has {array.shape[0]} rows but input '{first_name}' has {rows}; "
                "every input of a request needs the same batch dimension"
            )
    if rows == 0:
        raise InvalidItem(f"input '{first_name}' has an empty batch dimension")
    return rows


def _concatenate(batch: list[_Item]) -> Arrays:
    if len(batch) == 1:
        return dict(batch[0].inputs)
    return {name: np.concatenate([item.inputs[name] for item in batch]) for name in batch[0].inputs}


def _split(outputs: Mapping[str, np.ndarray], rows: list[int]) -> list[Arrays]:
    if not isinstance(outputs, Mapping):
        raise BatchOutputError(f"run_batch returned {type(outputs).__name__}, not a mapping of output name to array")
    total = sum(rows)
    for name, array in outputs.items():
        if not isinstance(array, np.ndarray) or array.ndim == 0 or array.shape[0] != total:
            shape = getattr(array, "shape", type(array).__name__)
            raise BatchOutputError(f"output '{name}' has shape {shape}; a batch of {total} rows needs {total} first")
    bounds = np.cumsum(rows)[:-1]
    per_item: list[Arrays] = [{} for _ in rows]
    for name, array in outputs.items():
        for item_outputs, part in zip(per_item, np.split(array, bounds), strict=True):
            item_outputs[name] = part
    return per_item


def _settle(
    future: asyncio.Future[Arrays], *, result: Arrays | None = None, exception: BaseException | None = None
) -> None:
    """Resolve a request's future, unless its caller already gave up on it."""
    if future.done():
        return
    if exception is not None:
        future.set_exception(exception)
    else:
        future.set_result(result if result is not None else {})
