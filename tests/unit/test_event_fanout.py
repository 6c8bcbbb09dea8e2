"""The fan-out's parts without a database: the SSE frame, the buffer every stream of a job reads
from, and the feed's writes to caught-up streams (slow or closing ones handed back)."""

from __future__ import annotations

from typing import Any

from api.event_fanout import PUSH_LIMIT, FeedBuffer, Frame, JobFeed, Sink, Watcher, sse_frame


def frame(seq: int, terminal: bool = False) -> Frame:
    return Frame(seq=seq, data=f"{seq}\n".encode(), terminal=terminal)


def test_a_frame_carries_id_type_and_json():
    assert sse_frame("evt_1", "progress", '{"a":1}') == b'id: evt_1\nevent: progress\ndata: {"a":1}\n\n'


def test_a_stream_reads_what_follows_its_cursor():
    buffer = FeedBuffer(floor=10)
    buffer.extend([frame(12), frame(15), frame(20)])
    assert [f.seq for f in buffer.after(10) or []] == [12, 15, 20]
    assert [f.seq for f in buffer.after(15) or []] == [20]
    assert buffer.after(20) == []
    assert buffer.after(99) == []  # ahead of the buffer (a resumed cursor): wait for more


def test_a_cursor_below_the_floor_reads_the_database():
    buffer = FeedBuffer(floor=10)
    assert buffer.after(9) is None


def test_trimming_raises_the_floor():
    buffer = FeedBuffer(floor=0, capacity=3)
    buffer.extend([frame(s) for s in (1, 2, 3, 4, 5)])
    assert buffer.floor == 2
    assert buffer.after(1) is None
    assert [f.seq for f in buffer.after(2) or []] == [3, 4, 5]


def test_events_read_twice_are_kept_once():
    buffer = FeedBuffer(floor=0)
    buffer.extend([frame(1), frame(2)])
    buffer.extend([frame(2), frame(3)])
    assert [f.seq for f in buffer.after(0) or []] == [1, 2, 3]


def test_the_terminal_event_finishes_the_feed():
    buffer = FeedBuffer(floor=0)
    buffer.extend([frame(1)])
    assert not buffer.finished
    buffer.extend([frame(2, terminal=True)])
    assert buffer.finished


class FakeSink:
    """A connection whose unsent bytes the test sets."""

    def __init__(self, backlog: int | None = 0) -> None:
        self.written: list[bytes] = []
        self.unsent = backlog

    async def write(self, data: bytes) -> None:
        self.written.append(data)

    def backlog(self) -> int | None:
        return self.unsent


def feed_with(watchers: list[Watcher]) -> JobFeed:
    async def never(*_: object) -> Any:
        raise AssertionError("not read in this test")

    feed = JobFeed("job_1", 0, never, never, lambda: 1.0)
    feed.live.update(watchers)
    return feed


async def test_the_feed_writes_new_frames_to_every_caught_up_stream():
    fast, slow, closing = FakeSink(), FakeSink(backlog=PUSH_LIMIT), FakeSink(backlog=None)
    watchers = [Watcher(0, Sink(s.write, s.backlog)) for s in (fast, slow, closing)]
    feed = feed_with(watchers)
    feed.buffer.extend([frame(1), frame(2)])
    await feed._push(0)
    assert fast.written == [b"1\n2\n"] and watchers[0].seq == 2
    assert feed.live == {watchers[0]}  # the slow and the closing one are handed back to their own tasks
    assert [w.wake.is_set() for w in watchers] == [False, True, True]
    assert slow.written == closing.written == []


async def test_the_terminal_frame_ends_the_live_streams():
    sink = FakeSink()
    watcher = Watcher(2, Sink(sink.write, sink.backlog))
    feed = feed_with([watcher])
    feed.buffer.extend([frame(1), frame(2), frame(3, terminal=True)])
    await feed._push(2)
    assert sink.written == [b"3\n"]
    assert watcher.ended and watcher.wake.is_set() and feed.live == set()
