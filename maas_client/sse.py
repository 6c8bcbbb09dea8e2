"""Server-Sent Events, parsed line by line as the WHATWG spec says: ``id``, ``event`` and ``data``
fields, comments (``: keep-alive``) ignored, a blank line ends an event. Pure: lines in, events out.

    parser = SseParser()
    for line in response.iter_lines():
        event = parser.feed(line)
        if event is not None:
            handle(event.id, event.event, event.data)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SseEvent:
    id: str | None
    event: str
    data: str


class SseParser:
    """Feed it lines (without their end of line); it returns an event when a blank line completes one."""

    def __init__(self) -> None:
        self.last_id: str | None = None
        self._event = ""
        self._data: list[str] = []

    def feed(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SseEvent(id=self.last_id, event=event or "message", data="\n".join(data))


class Resumption:
    """Where a job's event stream stands across connections: the last event id (sent back as
    ``Last-Event-ID``, so the server starts after it: nothing missed, nothing repeated) and whether to
    connect again. Pure; each client drives it with its own I/O.

    A connection that breaks is opened again (after a backoff, ``max_failures`` times in a row at
    most); one the server closes cleanly ends the stream once the job's final status was seen, or when
    a fresh connection brought nothing (the job had already ended).
    """

    def __init__(self, after: str | None, max_failures: int = 5, backoff_s: float = 0.5):
        self.last_id = after
        self.max_failures, self.backoff_s = max_failures, backoff_s
        self.failures = 0
        self.finished = False
        self._fresh = 0

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_id:
            headers["Last-Event-ID"] = self.last_id
        return headers

    def connected(self) -> None:
        self._fresh = 0

    def received(self, event_id: str, final: bool) -> None:
        self.last_id, self.failures = event_id, 0
        self._fresh += 1
        self.finished = self.finished or final

    def closed(self) -> bool:
        """The server ended the response: whether to connect again."""
        return not self.finished and self._fresh > 0

    def broken(self) -> float | None:
        """The connection broke: seconds to wait before connecting again, or None to give up."""
        self.failures += 1
        if self.failures > self.max_failures:
            return None
        return min(8.0, self.backoff_s * 2 ** (self.failures - 1))
