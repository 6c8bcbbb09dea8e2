"""Server-Sent Events fanned out from one reader per job, woken by PostgreSQL notifications: many
streams of a running job share one feed and each gets every event in order; a stream resumed with
``Last-Event-ID`` gets exactly the events after it."""

from __future__ import annotations

import asyncio

from api import event_fanout
from api.event_fanout import FANOUT
from tests.support.api import create_job, job_events
from tests.support.eventually import eventually_async


async def read_stream(api, tenant, job_id: str, last_event_id: str | None = None) -> list[dict[str, str]]:
    headers = {**tenant.headers, "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    received: list[dict[str, str]] = []
    async with api.get(f"/v1/jobs/{job_id}/events", headers=headers) as stream:
        assert stream.status == 200
        current: dict[str, str] = {}
        async for raw in stream.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(("id: ", "event: ", "data: ")):
                field, _, value = line.partition(": ")
                current[field] = value
            elif line == "" and current:
                received.append(current)
                current = {}
    return received


async def test_many_streams_share_one_feed_woken_by_notifications(api, tenant, job_worker, monkeypatch):
    # no fallback reads during the test: live events can only arrive through LISTEN/NOTIFY
    monkeypatch.setattr(event_fanout, "FALLBACK_LISTENING_S", 120.0)
    monkeypatch.setattr(event_fanout, "FALLBACK_NOT_LISTENING_S", 120.0)
    fanout = api.server.app[FANOUT]

    async def listening() -> bool:
        return fanout.listening

    await eventually_async(listening, timeout=10)
    job = await (await create_job(api, tenant, {"type": "test.sleep", "spec": {"seconds": 3, "steps": 6}})).json()
    streams = [asyncio.create_task(read_stream(api, tenant, job["id"])) for _ in range(5)]

    async def shared() -> bool:
        feed = fanout.feeds.get(job["id"])
        return feed is not None and feed.watchers == 5

    await eventually_async(shared, timeout=10)
    assert list(fanout.feeds) == [job["id"]]

    async def some_progress() -> list[dict] | None:
        events = await job_events(api, tenant, job["id"])
        return events if any(e["type"] == "progress" for e in events) else None

    seen = await eventually_async(some_progress, timeout=20)
    resumed = await read_stream(api, tenant, job["id"], last_event_id=seen[1]["id"])
    received = await asyncio.gather(*streams)

    stored = [e["id"] for e in await job_events(api, tenant, job["id"])]
    assert stored[-1] == received[0][-1]["id"]
    for stream in received:
        assert [r["id"] for r in stream] == stored
    assert [r["id"] for r in resumed] == stored[2:]
    assert fanout.feeds == {}  # the last stream closed the feed


async def test_a_stream_of_an_ended_job_ends_after_its_last_event(api, tenant, job_worker):
    job = await (await create_job(api, tenant, {"type": "test.sleep", "spec": {"steps": 1}}, prefer_wait_s=20)).json()
    stored = [e["id"] for e in await job_events(api, tenant, job["id"])]
    assert [r["id"] for r in await read_stream(api, tenant, job["id"])] == stored
    assert await read_stream(api, tenant, job["id"], last_event_id=stored[-1]) == []


async def test_an_unknown_last_event_id_is_a_400(api, tenant, job_worker):
    job = await (await create_job(api, tenant, {"type": "test.sleep", "spec": {"steps": 1}})).json()
    response = await api.get(
        f"/v1/jobs/{job['id']}/events",
        headers={**tenant.headers, "Accept": "text/event-stream", "Last-Event-ID": "evt_nope"},
    )
    assert response.status == 400
