"""Webhooks to a real local HTTP receiver: Standard Webhooks signatures (verified with the
``standardwebhooks`` package), event filters, retries with the same id, 410, slow receivers, rotation."""

from __future__ import annotations

import asyncio

import pytest
from standardwebhooks.webhooks import Webhook

from tests.support import webhook_receiver
from tests.support.api import create_job, wait_done
from tests.support.eventually import eventually_async
from tests.support.webhook_receiver import Receiver


@pytest.fixture
def serve(aiohttp_server):
    async def start(receiver: Receiver) -> str:
        return await webhook_receiver.serve(aiohttp_server, receiver)

    return start


async def deliveries(api, tenant, job_id: str) -> list[dict]:
    response = await api.get(f"/v1/jobs/{job_id}/webhook-deliveries", headers=tenant.headers)
    return (await response.json())["data"]


async def wait_for_deliveries(api, tenant, job_id: str, done, timeout_s: float = 30) -> list[dict]:
    found: list[dict] = []

    async def settled() -> bool:
        found[:] = await deliveries(api, tenant, job_id)
        return bool(done(found))

    await eventually_async(settled, timeout_s, lambda: f"the deliveries to settle: {found}")
    return found


async def test_every_event_is_delivered_signed(api, tenant, job_worker, serve):
    receiver = Receiver()
    url = await serve(receiver)
    secret = (await (await api.get("/v1/webhooks/secret", headers=tenant.headers)).json())["key"]
    assert secret.startswith("whsec_")
    job = await (await create_job(api, tenant, {"type": "test.sleep", "spec": {"steps": 2}, "webhook": url})).json()
    await wait_done(api, tenant, job["id"])
    found = await wait_for_deliveries(
        api, tenant, job["id"], lambda d: len(d) == 4 and all(x["status"] == "delivered" for x in d)
    )
    assert sorted(d["event"] for d in found) == ["completed", "progress", "progress", "start"]

    verifier = Webhook(secret)
    bodies = [verifier.verify(body, headers) for headers, body in receiver.requests]
    by_event = {b["event"]: b for b in bodies}
    assert by_event["start"]["status"] == "running"
    assert by_event["completed"]["status"] == "succeeded"
    assert by_event["completed"]["id"] == job["id"] and by_event["completed"]["result"] == {"slept_s": 0.0}
    assert {headers["webhook-id"] for headers, _ in receiver.requests} == {d["id"] for d in found}


async def test_events_filter_limits_what_is_sent(api, tenant, job_worker, serve):
    receiver = Receiver()
    url = await serve(receiver)
    job = await (
        await create_job(
            api,
            tenant,
            {"type": "test.sleep", "spec": {"steps": 3}, "webhook": url, "webhook_events_filter": ["completed"]},
        )
    ).json()
    await wait_done(api, tenant, job["id"])
    found = await wait_for_deliveries(api, tenant, job["id"], lambda d: d and d[0]["status"] == "delivered")
    assert [d["event"] for d in found] == ["completed"]


async def test_failures_are_retried_with_the_same_id_until_success(api, tenant, job_worker, serve):
    receiver = Receiver(statuses=[500, 500, 200])
    url = await serve(receiver)
    secret = (await (await api.get("/v1/webhooks/secret", headers=tenant.headers)).json())["key"]
    job = await (
        await create_job(
            api,
            tenant,
            {"type": "test.sleep", "spec": {"steps": 1}, "webhook": url, "webhook_events_filter": ["completed"]},
        )
    ).json()
    found = await wait_for_deliveries(api, tenant, job["id"], lambda d: d and d[0]["status"] != "pending")
    assert found[0]["status"] == "delivered"
    assert [a["status_code"] for a in found[0]["attempts"]] == [500, 500, 200]
    assert len(receiver.requests) == 3
    assert {headers["webhook-id"] for headers, _ in receiver.requests} == {found[0]["id"]}
    for headers, body in receiver.requests:
        Webhook(secret).verify(body, headers)


async def test_410_stops_the_delivery(api, tenant, job_worker, serve):
    receiver = Receiver(statuses=[410])
    url = await serve(receiver)
    job = await (
        await create_job(
            api,
            tenant,
            {"type": "test.sleep", "spec": {"steps": 1}, "webhook": url, "webhook_events_filter": ["completed"]},
        )
    ).json()
    found = await wait_for_deliveries(api, tenant, job["id"], lambda d: d and d[0]["status"] != "pending")
    assert found[0]["status"] == "disabled"
    await asyncio.sleep(1)
    assert len(receiver.requests) == 1


async def test_a_receiver_that_never_answers_does_not_hold_the_job(api, tenant, job_worker, serve, settings):
    receiver = Receiver(hang=True)
    url = await serve(receiver)
    job = await (
        await create_job(
            api,
            tenant,
            {
                "type": "test.sleep",
                "spec": {"steps": 1},
                "webhook": url,
                "webhook_events_filter": ["start", "completed"],
            },
        )
    ).json()
    done = await wait_done(api, tenant, job["id"])
    assert done["status"] == "succeeded"
    # the job finished while its first webhook was still waiting on the receiver
    start = next(d for d in await deliveries(api, tenant, job["id"]) if d["event"] == "start")
    assert start["status"] == "pending"
    found = await wait_for_deliveries(
        api, tenant, job["id"], lambda d: all(len(x["attempts"]) >= 2 for x in d), timeout_s=40
    )
    attempt = found[0]["attempts"][0]
    assert attempt["status_code"] is None and "Timeout" in attempt["error"]


async def test_rotation_signs_with_old_and_new_secrets(api, tenant, job_worker, serve):
    old = (await (await api.get("/v1/webhooks/secret", headers=tenant.headers)).json())["key"]
    rotated = await (await api.post("/v1/webhooks/secret/rotate", headers=tenant.headers)).json()
    assert rotated["key"] != old and rotated["previous_key_valid_until"]
    receiver = Receiver()
    url = await serve(receiver)
    job = await (
        await create_job(
            api,
            tenant,
            {"type": "test.sleep", "spec": {"steps": 1}, "webhook": url, "webhook_events_filter": ["completed"]},
        )
    ).json()
    await wait_for_deliveries(api, tenant, job["id"], lambda d: d and d[0]["status"] == "delivered")
    headers, body = receiver.requests[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(body, headers)
    Webhook(rotated["key"]).verify(body, headers)
