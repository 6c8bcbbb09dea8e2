"""The fan-out's pure parts: the SSE frame and the buffer every stream of a job reads from."""

from __future__ import annotations

from api.event_fanout import FeedBuffer, Frame, sse_frame


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
