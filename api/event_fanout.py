"""Live job events for every Server-Sent Events stream of an API process, from one reader per job.

A trigger on ``job_events`` (migration 0007) sends ``NOTIFY maas_job_events, '<job id>'`` when a
worker inserts an event. Each API process keeps one ``LISTEN`` connection (``api.pg_listener``,
shared with the inference router); a notification wakes the one feed of that job, which reads the
new rows once, renders each as its SSE frame once, and keeps the latest of them in a buffer every
watching stream reads from. The rows stay the truth: a notification only says "read again", so a
lost one costs latency (a slow fallback read catches up), never an event. A stream whose cursor
is older than the buffer (a late ``Last-Event-ID``, a slow client) reads its backlog from the
database itself until it reaches the buffer.

``FeedBuffer`` and ``sse_frame`` are pure; ``EventFanout`` owns the feeds' tasks.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass

from aiohttp import web
from sqlalchemy import select

from api.context import CONTEXT, ApiContext
from api.pg_listener import LISTENER, PgListener
from core.job_states import TERMINAL
from core.models import Job, JobEvent
from core.objects import JobEventObject

log = logging.getLogger("maas.api.events")

CHANNEL = "maas_job_events"
READ_BATCH = 500
BUFFER_EVENTS = 2048
# a feed reads again after this long without a notification: the listener may have dropped one
FALLBACK_LISTENING_S = 5.0
FALLBACK_NOT_LISTENING_S = 0.5
# a caught-up stream is written by its feed while its connection holds less than this unsent
PUSH_LIMIT = 32 * 1024


@dataclass(frozen=True)
class Frame:
    """One event as its stream bytes; ``terminal`` marks the status event that ends the job."""

    seq: int
    data: bytes
    terminal: bool


def sse_frame(event_id: str, event_type: str, payload_json: str) -> bytes:
    """The Server-Sent Events frame of one event: its id (for ``Last-Event-ID``), type and JSON."""
    return f"id: {event_id}\nevent: {event_type}\ndata: {payload_json}\n\n".encode()


def render(event: JobEvent) -> Frame:
    payload = JobEventObject.model_validate(event).model_dump_json()
    terminal = event.type == "status" and event.data.get("status") in TERMINAL
    return Frame(seq=event.seq, data=sse_frame(event.id, event.type, payload), terminal=terminal)


class FeedBuffer:
    """The latest frames of one job, in ``seq`` order.

    It holds every event with a ``seq`` above ``floor``; trimming the oldest raises the floor.
    ``after(seq)`` is what a stream at cursor ``seq`` writes next, or None when that cursor is
    below the floor (the stream reads the database instead).
    """

    def __init__(self, floor: int, capacity: int = BUFFER_EVENTS) -> None:
        self.floor = floor
        self.last_seq = floor
        self.capacity = capacity
        self.finished = False
        self._frames: list[Frame] = []
        self._seqs: list[int] = []

    def extend(self, frames: Sequence[Frame]) -> None:
        for frame in frames:
            if frame.seq <= self.last_seq:
                continue  # read twice (a fallback read racing a notification): keep each event once
            self._frames.append(frame)
            self._seqs.append(frame.seq)
            self.last_seq = frame.seq
            if frame.terminal:
                self.finished = True
        excess = len(self._frames) - self.capacity
        if excess > 0:
            self.floor = self._seqs[excess - 1]
            del self._frames[:excess], self._seqs[:excess]

    def after(self, seq: int) -> list[Frame] | None:
        if seq < self.floor:
            return None
        return self._frames[bisect.bisect_right(self._seqs, seq) :]


ReadEvents = Callable[[str, int, int], Awaitable[list[JobEvent]]]
JobEnded = Callable[[str], Awaitable[bool]]


@dataclass
class Sink:
    """Where one stream's bytes go: ``write`` (awaited), and ``backlog()``, the bytes its connection
    has not sent yet (None once it is closing)."""

    write: Callable[[bytes], Awaitable[None]]
    backlog: Callable[[], int | None]


def response_sink(request: web.Request, response: web.StreamResponse) -> Sink:
    def backlog() -> int | None:
        transport = request.transport
        if transport is None or transport.is_closing():
            return None
        return transport.get_write_buffer_size()

    return Sink(write=response.write, backlog=backlog)


class Watcher:
    """One stream's place in its job's feed."""

    def __init__(self, seq: int, sink: Sink) -> None:
        self.seq = seq
        self.sink = sink
        self.last_write = time.monotonic()
        self.ended = False
        self.error: BaseException | None = None
        self.wake = asyncio.Event()

    async def write(self, data: bytes, seq: int | None = None) -> None:
        await self.sink.write(data)
        self.last_write = time.monotonic()
        if seq is not None:
            self.seq = seq


class JobFeed:
    """One job's reader: woken by notifications (or the fallback timer), it fills the buffer and
    writes the new frames itself to every caught-up (``live``) watcher whose connection keeps up, so
    an event costs one write per stream, not one task wake-up each. A watcher that falls behind is
    handed back to its own task, which catches up with awaited writes."""

    def __init__(self, job_id: str, floor: int, read: ReadEvents, ended: JobEnded, fallback_s: Callable[[], float]):
        self.job_id = job_id
        self.buffer = FeedBuffer(floor)
        self.watchers = 0
        self.live: set[Watcher] = set()
        self._read = read
        self._ended = ended
        self._fallback_s = fallback_s
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"job-feed-{self.job_id}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for watcher in self.live:
            watcher.wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def _push(self, before: int) -> None:
        frames = self.buffer.after(before) or []
        if frames:
            data, last = b"".join(f.data for f in frames), frames[-1].seq
            terminal = any(f.terminal for f in frames)
            for watcher in list(self.live):
                backlog = watcher.sink.backlog()
                if watcher.seq != before or backlog is None or backlog + len(data) > PUSH_LIMIT:
                    self._hand_back(watcher)  # behind, closing or slow: its own task takes over
                    continue
                try:
                    await watcher.write(data, last)  # within PUSH_LIMIT, the transport is not paused: no wait
                except Exception as exc:
                    watcher.error = exc
                    self._hand_back(watcher)
                    continue
                if terminal:
                    watcher.ended = True
                    self._hand_back(watcher)
        if self.buffer.finished:
            for watcher in list(self.live):
                self._hand_back(watcher)

    def _hand_back(self, watcher: Watcher) -> None:
        self.live.discard(watcher)
        watcher.wake.set()

    async def _run(self) -> None:
        while not self.buffer.finished:
            self._wake.clear()
            before = self.buffer.last_seq
            try:
                rows = await self._read(self.job_id, self.buffer.last_seq, READ_BATCH)
                if rows:
                    self.buffer.extend([render(row) for row in rows])
                elif await self._ended(self.job_id):
                    # the job ended without a terminal event after our cursor: read once more, then stop
                    rows = await self._read(self.job_id, self.buffer.last_seq, READ_BATCH)
                    self.buffer.extend([render(row) for row in rows])
                    self.buffer.finished = self.buffer.finished or not rows
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the events of job %s failed; trying again", self.job_id)
                rows = []
            await self._push(before)
            if len(rows) == READ_BATCH:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._fallback_s())


class EventFanout:
    """The process's feeds by job id, woken by the process's ``LISTEN`` connection."""

    def __init__(self, ctx: ApiContext, listener: PgListener) -> None:
        self.ctx = ctx
        self.feeds: dict[str, JobFeed] = {}
        self._listener = listener

    @property
    def listening(self) -> bool:
        return self._listener.listening

    def start(self) -> None:
        self._listener.subscribe(CHANNEL, self._notified, on_connect=self._wake_all)

    async def close(self) -> None:
        for feed in list(self.feeds.values()):
            await feed.stop()
        self.feeds.clear()

    def _fallback_s(self) -> float:
        return FALLBACK_LISTENING_S if self.listening else FALLBACK_NOT_LISTENING_S

    def _notified(self, job_id: str) -> None:
        woken = self.feeds.get(job_id)
        if woken is not None:
            woken.wake()

    def _wake_all(self) -> None:  # notifications sent while the listener was away are lost
        for feed in self.feeds.values():
            feed.wake()

    async def read_events(self, job_id: str, seq: int, limit: int) -> list[JobEvent]:
        """A job's events after ``seq``, oldest first."""
        async with self.ctx.db() as session:
            statement = (
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.seq > seq)
                .order_by(JobEvent.seq)
                .limit(limit)
            )
            return list(await session.scalars(statement))

    async def _job_ended(self, job_id: str) -> bool:
        async with self.ctx.db() as session:
            status = await session.scalar(select(Job.status).where(Job.id == job_id))
        return status is None or status in TERMINAL

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str, seq: int) -> AsyncIterator[JobFeed]:
        """The job's feed while the caller streams it; the first watcher starts it, the last stops it."""
        feed = self.feeds.get(job_id)
        if feed is None:
            feed = JobFeed(job_id, seq, self.read_events, self._job_ended, self._fallback_s)
            self.feeds[job_id] = feed
            feed.start()
        feed.watchers += 1
        try:
            yield feed
        finally:
            feed.watchers -= 1
            if feed.watchers == 0 and self.feeds.get(job_id) is feed:
                del self.feeds[job_id]
                await feed.stop()


FANOUT = web.AppKey("event_fanout", EventFanout)


async def fanout_context(app: web.Application) -> AsyncIterator[None]:
    """The app's fan-out, from startup to shutdown (after ``CONTEXT`` and ``LISTENER`` are set up)."""
    fanout = EventFanout(app[CONTEXT], app[LISTENER])
    fanout.start()
    app[FANOUT] = fanout
    yield
    await fanout.close()


async def stream(fanout: EventFanout, job_id: str, seq: int, sink: Sink, keepalive_s: float) -> None:
    """Write every event of the job after ``seq``, in order, until its terminal one (or its end)."""
    watcher = Watcher(seq, sink)
    async with fanout.watch(job_id, seq) as feed:
        while not watcher.ended:
            if watcher.error is not None:
                raise watcher.error
            frames = feed.buffer.after(watcher.seq)
            if frames is None:  # behind the buffer: this stream's own backlog, from the database
                frames = [render(row) for row in await fanout.read_events(job_id, watcher.seq, READ_BATCH)]
            if frames:
                await watcher.write(b"".join(f.data for f in frames), frames[-1].seq)
                if any(f.terminal for f in frames):
                    return
                continue
            if feed.buffer.finished:
                return
            # caught up: the feed writes to this stream from now on, until it hands it back
            watcher.wake.clear()
            feed.live.add(watcher)
            quiet_until = watcher.last_write + keepalive_s
            try:
                await asyncio.wait_for(watcher.wake.wait(), max(0.0, quiet_until - time.monotonic()))
            except TimeoutError:
                if time.monotonic() - watcher.last_write >= keepalive_s:
                    await watcher.write(b": keep-alive\n\n")
            finally:
                feed.live.discard(watcher)
