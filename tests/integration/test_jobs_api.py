"""The jobs contract through real HTTP, Postgres, broker and Celery worker processes."""

from __future__ import annotations

import asyncio
import json
import threading
from datetime import UTC, datetime, timedelta

import psutil
import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import DBAPIError

from api.app import create_app
from api.idempotency import _fingerprint
from core import jobs as job_service
from core.ids import new_id
from core.models import Artifact, IdempotencyKey, Job
from core.settings import Settings
from tests.support.api import create_job, job_events, upload_raw, wait_done
from tests.support.eventually import eventually_async

PROBLEM = "application/problem+json"


async def test_a_job_runs_to_success_with_progress_metrics_and_events(api, tenant, job_worker):
    response = await create_job(
        api, tenant, {"type": "test.sleep", "spec": {"seconds": 0.3, "steps": 3}, "metadata": {"team": "vision"}}
    )
    assert response.status == 201, await response.text()
    job = await response.json()
    assert job["status"] == "queued" and job["attempts"] == 0
    assert job["urls"]["cancel"].endswith(f"/v1/jobs/{job['id']}/cancel")

    waited = await api.get(f"/v1/jobs/{job['id']}", headers={**tenant.headers, "Prefer": "wait=20"})
    assert waited.headers["Preference-Applied"] == "wait=20"
    done = await waited.json()
    assert done["status"] == "succeeded", done
    assert done["result"] == {"slept_s": 0.3}
    assert done["attempts"] == 1
    assert done["progress"] == {"step": 3, "total_steps": 3, "loss": pytest.approx(1 / 3), "fraction": 1.0}
    assert done["metrics"] == {"final_loss": pytest.approx(1 / 3)}
    assert done["metadata"] == {"team": "vision"}
    assert done["started_at"] and done["finished_at"] >= done["started_at"]

    kinds = [
        (e["type"], e["data"].get("status") or e["data"].get("step")) for e in await job_events(api, tenant, job["id"])
    ]
    assert kinds == [
        ("status", "queued"),
        ("status", "running"),
        ("progress", 1),
        ("progress", 2),
        ("progress", 3),
        ("metrics", None),
        ("status", "succeeded"),
    ]


async def test_prefer_wait_on_create_returns_the_finished_job(api, tenant, job_worker):
    response = await create_job(api, tenant, {"type": "test.sleep", "spec": {"steps": 1}}, prefer_wait_s=20)
    assert response.status == 201
    assert (await response.json())["status"] == "succeeded"


async def test_a_handler_failure_has_a_code(api, tenant, job_worker):
    response = await create_job(api, tenant, {"type": "test.sleep", "spec": {"steps": 1, "fail_with": "nan_loss"}})
    job = await wait_done(api, tenant, (await response.json())["id"])
    assert job["status"] == "failed"
    assert job["error"] == {"code": "nan_loss", "message": "failing as the spec asked"}


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"type": "no-such-type", "spec": {}}, "/type"),
        ({"type": "test.sleep", "spec": {"seconds": -1}}, "/spec/seconds"),
        ({"type": "test.sleep", "spec": {"sleep": 1}}, "/spec/sleep"),
        ({"type": "test.sleep"}, "/spec"),
        ({"type": "test.sleep", "spec": {}, "priority": 101}, "/priority"),
        ({"type": "test.sleep", "spec": {}, "urgency": 1}, "/urgency"),
        ({"type": "test.sleep", "spec": {}, "webhook": "ftp://example.com/hook"}, "/webhook"),
        ({"type": "test.sleep", "spec": {}, "webhook_events_filter": ["finished"]}, "/webhook_events_filter/0"),
        ({"type": "test.sleep", "spec": {}, "metadata": {f"k{i}": "v" for i in range(17)}}, "/metadata"),
    ],
)
async def test_bad_job_requests_are_422_with_a_pointer_and_create_nothing(api, tenant, db, body, pointer):
    response = await create_job(api, tenant, body)
    assert response.status == 422
    assert response.content_type == PROBLEM
    assert pointer in [e["pointer"] for e in (await response.json())["errors"]]
    with db() as session:
        assert session.scalars(select(Job).where(Job.tenant_id == tenant.id)).all() == []


async def test_a_job_type_checks_the_world_before_anything_is_created(api, tenant, other_tenant, db):
    upload = await upload_raw(api, tenant, b"a\n1\n", "d.csv")
    file_id = (await upload.json())["id"]
    assert (await create_job(api, tenant, {"type": "test.needs_file", "spec": {"file_id": file_id}})).status == 201
    foreign = await create_job(api, other_tenant, {"type": "test.needs_file", "spec": {"file_id": file_id}})
    assert foreign.status == 422
    assert (await foreign.json())["errors"] == [{"pointer": "/spec/file_id", "detail": "no such file"}]
    with db() as session:
        assert session.scalars(select(Job).where(Job.tenant_id == other_tenant.id)).all() == []


async def test_private_webhook_targets_are_refused_unless_allowed(aiohttp_client, settings, tenant):
    strict = await aiohttp_client(create_app(settings.model_copy(update={"webhook_allow_private_targets": False})))
    for url in ("http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "http://10.0.0.8/x", "http://[::1]/x"):
        response = await create_job(strict, tenant, {"type": "test.unclaimed", "spec": {}, "webhook": url})
        assert response.status == 422, url
        assert "private, loopback or link-local" in (await response.json())["errors"][0]["detail"]


async def test_idempotency_replay_conflict_and_in_flight(api, tenant, db):
    body = {"type": "test.unclaimed", "spec": {}}
    first = await create_job(api, tenant, body, idempotency_key="order-1")
    assert first.status == 201
    replay = await create_job(api, tenant, {"spec": {}, "type": "test.unclaimed"}, idempotency_key="order-1")
    assert replay.status == 201
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert (await replay.json())["id"] == (await first.json())["id"]

    other = await create_job(
        api, tenant, {"type": "test.unclaimed", "spec": {}, "metadata": {"a": "b"}}, idempotency_key="order-1"
    )
    assert other.status == 422
    assert "different request" in (await other.json())["detail"]

    # another request with this key is being handled right now: its claim exists, without a response yet
    raw = json.dumps(body).encode()
    with db() as session:
        session.add(
            IdempotencyKey(
                tenant_id=tenant.id,
                key="order-2",
                method="POST",
                path="/v1/jobs",
                request_sha256=_fingerprint("POST", "/v1/jobs", raw),
                expires_at=datetime.now(UTC) + timedelta(hours=24),
            )
        )
        session.commit()
    busy = await create_job(api, tenant, body, idempotency_key="order-2")
    assert busy.status == 409
    assert busy.headers["Retry-After"] == "1"

    with db() as session:
        assert len(session.scalars(select(Job).where(Job.tenant_id == tenant.id)).all()) == 1


async def test_a_failed_request_releases_its_idempotency_key(api, tenant):
    bad = await create_job(api, tenant, {"type": "test.sleep", "spec": {"seconds": -1}}, idempotency_key="k")
    assert bad.status == 422
    good = await create_job(api, tenant, {"type": "test.sleep", "spec": {"seconds": -1}}, idempotency_key="k")
    assert good.status == 422 and "Idempotent-Replayed" not in good.headers
    fixed = await create_job(api, tenant, {"type": "test.unclaimed", "spec": {}}, idempotency_key="k2")
    assert fixed.status == 201


async def test_listing_250_jobs_in_pages_of_100(api, tenant, other_tenant):
    created = []
    for batch in range(10):
        responses = await asyncio.gather(
            *[create_job(api, tenant, {"type": "test.unclaimed", "spec": {}}) for _ in range(25)]
        )
        created += [(await r.json())["id"] for r in responses]
        assert all(r.status == 201 for r in responses), batch
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": "100", **({"after": cursor} if cursor else {})}
        page = await (await api.get("/v1/jobs", params=params, headers=tenant.headers)).json()
        seen += [job["id"] for job in page["data"]]
        pages += 1
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert pages == 3
    assert sorted(seen) == sorted(created) and len(seen) == 250
    filtered = await (
        await api.get(
            "/v1/jobs", params={"type": "test.unclaimed", "status": "queued", "limit": "5"}, headers=tenant.headers
        )
    ).json()
    assert len(filtered["data"]) == 5 and filtered["has_more"]
    assert (await (await api.get("/v1/jobs", headers=other_tenant.headers)).json())["data"] == []
    assert (await api.get(f"/v1/jobs/{created[0]}", headers=other_tenant.headers)).status == 404
    assert (await api.post(f"/v1/jobs/{created[0]}/cancel", headers=other_tenant.headers)).status == 404


async def test_cancel_of_a_queued_job_is_immediate(api, tenant):
    job = await (await create_job(api, tenant, {"type": "test.unclaimed", "spec": {}})).json()
    canceled = await (await api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)).json()
    assert canceled["status"] == "canceled" and canceled["finished_at"]
    again = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert again.status == 200


async def test_cancel_of_a_finished_job_is_409(api, tenant, job_worker):
    response = await create_job(api, tenant, {"type": "test.sleep", "spec": {"steps": 0}}, prefer_wait_s=20)
    job = await response.json()
    assert job["status"] == "succeeded"
    conflict = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert conflict.status == 409
    assert (await conflict.json())["job"]["status"] == "succeeded"


async def _tree_pids(api, tenant, job_id: str) -> list[int]:
    async def reported() -> list[int] | None:
        for event in await job_events(api, tenant, job_id):
            if event["type"] == "log" and event["message"].startswith("pids "):
                return [int(p) for p in event["message"].split()[1:]]
        return None

    return await eventually_async(reported, 30, "the job to report its process tree")


@pytest.mark.parametrize("ignore_sigterm", [False, True])
async def test_cancel_stops_the_whole_process_tree(api, tenant, job_worker, settings, ignore_sigterm):
    job = await (
        await create_job(api, tenant, {"type": "test.process_tree", "spec": {"ignore_sigterm": ignore_sigterm}})
    ).json()
    pids = await _tree_pids(api, tenant, job["id"])
    assert all(psutil.pid_exists(pid) for pid in pids)
    started = asyncio.get_running_loop().time()
    response = await api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    assert response.status == 200
    done = await wait_done(api, tenant, job["id"], timeout_s=10)
    elapsed = asyncio.get_running_loop().time() - started
    assert done["status"] == "canceled"
    assert elapsed < 5
    if ignore_sigterm:
        assert elapsed >= settings.cancel_grace_s  # the grandchild outlived SIGTERM until the grace ran out
    assert not [pid for pid in pids if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
    types = [e["type"] for e in await job_events(api, tenant, job["id"])]
    assert types.count("cancel_requested") == 1
    assert [e for e in await job_events(api, tenant, job["id"]) if e["type"] == "status"][-1]["data"][
        "status"
    ] == "canceled"


async def test_sse_stream_delivers_every_event_in_order_to_the_end(api, tenant, job_worker):
    job = await (await create_job(api, tenant, {"type": "test.sleep", "spec": {"seconds": 0.5, "steps": 4}})).json()
    received = []
    async with api.get(
        f"/v1/jobs/{job['id']}/events", headers={**tenant.headers, "Accept": "text/event-stream"}
    ) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        current: dict = {}
        async for raw in stream.content:
            line = raw.decode().rstrip("\n")
            if line.startswith(("id: ", "event: ", "data: ")):
                field, _, value = line.partition(": ")
                current[field] = value
            elif line == "" and current:
                received.append(current)
                current = {}
    assert [r["event"] for r in received] == [
        "status",
        "status",
        "progress",
        "progress",
        "progress",
        "progress",
        "metrics",
        "status",
    ]
    assert json.loads(received[-1]["data"])["data"]["status"] == "succeeded"
    stored = await job_events(api, tenant, job["id"])
    assert [r["id"] for r in received] == [e["id"] for e in stored]


async def test_events_resume_after_a_cursor(api, tenant, job_worker):
    job = await (await create_job(api, tenant, {"type": "test.sleep", "spec": {"steps": 2}}, prefer_wait_s=20)).json()
    everything = await job_events(api, tenant, job["id"])
    page = await (
        await api.get(
            f"/v1/jobs/{job['id']}/events", params={"after": everything[1]["id"], "limit": "2"}, headers=tenant.headers
        )
    ).json()
    assert [e["id"] for e in page["data"]] == [e["id"] for e in everything[2:4]]
    assert page["has_more"] and page["next_cursor"] == everything[3]["id"]
    unknown = await api.get(f"/v1/jobs/{job['id']}/events", params={"after": "evt_nope"}, headers=tenant.headers)
    assert unknown.status == 400


async def test_a_lost_broker_message_is_dispatched_again(api, tenant, job_worker, db, settings):
    with db() as session:  # marked sent, as the dispatcher does, but its message never reaches the broker
        job = job_service.create_job(
            session,
            tenant_id=tenant.id,
            type_="test.sleep",
            queue="test-shared",
            max_attempts=3,
            spec={"steps": 1},
            webhook=None,
            webhook_events_filter=[],
            metadata={},
        )
        job.dispatched_at = job_service.now()
        session.commit()
    done = await wait_done(api, tenant, job.id, timeout_s=settings.redispatch_after_s + 20)
    assert done["status"] == "succeeded"


async def test_a_job_whose_worker_process_keeps_dying_fails_after_max_attempts(api, tenant, job_worker):
    job = await (await create_job(api, tenant, {"type": "test.crash", "spec": {}})).json()
    done = await wait_done(api, tenant, job["id"], timeout_s=60)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "max_attempts_exceeded"
    assert done["attempts"] == 3


async def test_restarting_the_api_loses_nothing(aiohttp_client, settings, tenant, job_worker):
    first = await aiohttp_client(create_app(settings))
    job = await (await create_job(first, tenant, {"type": "test.sleep", "spec": {"seconds": 1, "steps": 2}})).json()
    await first.close()
    second = await aiohttp_client(create_app(settings))
    done = await wait_done(second, tenant, job["id"])
    assert done["status"] == "succeeded"


def _move(db, settings, job_id: str, target: str, barrier: threading.Barrier, results: dict) -> None:
    with db() as session:
        barrier.wait()
        results[target] = job_service.transition(session, job_id, target, settings)
        session.commit()


def test_cancel_racing_success_ends_in_exactly_one_terminal_state(db, settings: Settings, tenant):
    for _ in range(20):
        with db() as session:
            job = job_service.create_job(
                session,
                tenant_id=tenant.id,
                type_="test.unclaimed",
                queue="test-unclaimed",
                max_attempts=3,
                spec={},
                webhook=None,
                webhook_events_filter=[],
                metadata={},
            )
            job_service.transition(session, job.id, "running", settings, values={"worker_id": "w"})
            session.commit()
        results: dict[str, object] = {}
        barrier = threading.Barrier(2)

        threads = [
            threading.Thread(target=_move, args=(db, settings, job.id, target, barrier, results))
            for target in ("succeeded", "canceled")
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sum(r is not None for r in results.values()) == 1
        with db() as session:
            final = session.get(Job, job.id)
            terminal_events = session.execute(
                text(
                    "SELECT count(*) FROM job_events WHERE job_id = :id AND data->>'status' IN "
                    "('succeeded', 'canceled')"
                ),
                {"id": job.id},
            ).scalar()
        assert final.status in ("succeeded", "canceled") and terminal_events == 1


def test_the_database_refuses_to_change_a_terminal_state(db, settings, tenant):
    with db() as session:
        job = job_service.create_job(
            session,
            tenant_id=tenant.id,
            type_="test.unclaimed",
            queue="test-unclaimed",
            max_attempts=3,
            spec={},
            webhook=None,
            webhook_events_filter=[],
            metadata={},
        )
        job_service.transition(session, job.id, "canceled", settings)
        session.commit()
    with db() as session, pytest.raises(DBAPIError, match="may not change"):
        session.execute(update(Job).where(Job.id == job.id).values(status="running"))
        session.commit()


async def test_job_counts_are_on_metrics(api, tenant):
    await create_job(api, tenant, {"type": "test.unclaimed", "spec": {}})
    metrics = await (await api.get("/metrics")).text()
    assert 'maas_jobs{status="queued",type="test.unclaimed"}' in metrics
    assert 'maas_queue_depth{queue="inference"}' in metrics


async def test_a_deleted_artifact_is_gone_saying_when_and_why(api, tenant, other_tenant, db):
    deleted_at = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    rows = {
        name: Artifact(
            id=new_id("artifact"),
            tenant_id=tenant.id,
            kind="checkpoint",
            name=f"{name}.tar",
            bytes=1,
            sha256="0" * 64,
            storage_key=f"jobs/{tenant.id}/none/{name}.tar",
            deleted_at=deleted_at if name == "old" else None,
            deleted_reason="checkpoint retention: not among the newest 1" if name == "old" else None,
        )
        for name in ("old", "new")
    }
    ids = {name: row.id for name, row in rows.items()}
    with db() as session:
        session.add_all(rows.values())
        session.commit()
    gone = await api.get(f"/v1/artifacts/{ids['old']}", headers=tenant.headers)
    assert gone.status == 410 and gone.content_type == PROBLEM
    body = await gone.json()
    assert body["title"] == "Gone" and body["deleted_at"] == "2026-11-29T12:00:00Z"
    assert body["deleted_reason"] == "checkpoint retention: not among the newest 1"
    assert "2026-11-29T12:00:00Z" in body["detail"] and "newest 1" in body["detail"]
    live = await api.get(f"/v1/artifacts/{ids['new']}", headers=tenant.headers)
    assert live.status == 200 and (await live.json())["deleted_at"] is None
    # another tenant learns nothing of it
    assert (await api.get(f"/v1/artifacts/{ids['old']}", headers=other_tenant.headers)).status == 404
