"""Fair scheduling with real workers (workers.dispatcher, core.fair_share): a tenant's burst waits
while another tenant's single job takes the first worker slot that frees up; the broker never
holds more than the workers can start; every job runs once; a tenant's ``running_jobs_<type>``
quota holds it back while the slot goes to another; ``priority`` is validated and orders a
tenant's own jobs.

The shared test worker (``job_worker``) runs two jobs at once on ``test-shared``. Start order is
read from the job events' ``seq``, one sequence over every job's events."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest
from sqlalchemy import func, or_, select

from core import quotas
from core.models import Job, JobEvent, JobWorker
from maas_client import AsyncClient, ValidationError
from tests.support.api import cancel_job, create_job, wait_done
from tests.support.eventually import eventually, eventually_async
from tests.support.processes import Worker

SLOTS = 2  # the job_worker's concurrency
SHORT = {"type": "test.sleep", "spec": {"seconds": 0.4, "steps": 1}}


def _status_events(db, job_ids: list[str], status: str) -> dict[str, list[int]]:
    """Each job's ``status`` events of ``status``, as event sequence numbers."""
    with db() as session:
        rows = session.execute(
            select(JobEvent.job_id, JobEvent.seq).where(
                JobEvent.job_id.in_(job_ids), JobEvent.type == "status", JobEvent.data["status"].astext == status
            )
        ).all()
    found: dict[str, list[int]] = {job_id: [] for job_id in job_ids}
    for job_id, seq in rows:
        found[job_id].append(seq)
    return found


def _holding(db) -> int:
    """Jobs of the test worker's queue running, or sent to the broker and not yet claimed."""
    with db() as session:
        return int(
            session.scalar(
                select(func.count())
                .select_from(Job)
                .where(
                    Job.type.in_(("test.sleep", "test.process_tree", "test.crash")),
                    or_(Job.status == "running", (Job.status == "queued") & Job.dispatched_at.is_not(None)),
                )
            )
            or 0
        )


async def test_another_tenants_single_job_starts_at_the_first_free_slot_ahead_of_a_burst(
    api, tenant, other_tenant, job_worker, db
):
    burst = []
    for _ in range(20):
        response = await create_job(api, tenant, SHORT)
        assert response.status == 201, await response.text()
        burst.append((await response.json())["id"])

    async def busy() -> bool:
        return sum(bool(s) for s in _status_events(db, burst, "running").values()) >= SLOTS

    await eventually_async(busy, 30, "tenant A's burst to fill the worker's slots")
    single = (await (await create_job(api, other_tenant, SHORT)).json())["id"]

    held_samples: list[int] = []

    async def all_done() -> bool:
        held_samples.append(_holding(db))
        with db() as session:
            open_jobs = session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.id.in_([*burst, single]), Job.status.in_(("queued", "running")))
            )
        return open_jobs == 0

    await eventually_async(all_done, 120, "every job to finish", interval_s=0.1)

    queued_at = _status_events(db, [single], "queued")[single][0]
    started = _status_events(db, [*burst, single], "running")
    assert all(len(seqs) == 1 for seqs in started.values()), started  # nothing started twice
    b_started = started[single][0]
    a_between = [j for j in burst if queued_at < started[j][0] < b_started]
    # at most the jobs already sent when B arrived (one per slot) start before it
    assert len(a_between) <= SLOTS, (len(a_between), a_between)
    a_after = [j for j in burst if started[j][0] > b_started]
    assert a_after, "B's job was expected ahead of part of A's burst"
    for job_id in [*burst, single]:
        done = await wait_done(api, tenant if job_id != single else other_tenant, job_id)
        assert done["status"] == "succeeded" and done["attempts"] == 1, done
    assert max(held_samples) <= SLOTS, held_samples  # the broker never held more than the slots


async def test_priority_is_validated_naming_the_field_and_orders_a_tenants_own_jobs(api, tenant, job_worker, db):
    for bad in (101, -101, "high", 1.5):
        response = await create_job(api, tenant, {**SHORT, "priority": bad})
        assert response.status == 422, (bad, await response.text())
        problem = await response.json()
        assert [e["pointer"] for e in problem["errors"]] == ["/priority"], problem

    # the worker's slots held by this tenant's jobs (until canceled), while a low then a high priority job queue up
    hold = {"type": "test.sleep", "spec": {"seconds": 60, "steps": 60}}
    blockers = [(await (await create_job(api, tenant, hold)).json())["id"] for _ in range(SLOTS)]

    async def blocked() -> bool:
        return all(_status_events(db, blockers, "running").values())

    await eventually_async(blocked, 30, "the holding jobs to take every slot")
    low = (await (await create_job(api, tenant, SHORT)).json())["id"]
    created = await create_job(api, tenant, {**SHORT, "priority": 7})
    high = await created.json()
    assert created.status == 201 and high["priority"] == 7
    for blocker in blockers:  # one slot frees up, then the other
        assert (await cancel_job(api, tenant, blocker)).status == 200
        await wait_done(api, tenant, blocker)
    await asyncio.gather(*(wait_done(api, tenant, j, timeout_s=60) for j in (low, high["id"])))
    started = _status_events(db, [low, high["id"]], "running")
    assert started[high["id"]][0] < started[low][0]


async def test_the_running_jobs_quota_of_a_type_holds_a_tenant_to_it_while_the_free_slot_goes_to_another(
    api, tenant, other_tenant, job_worker, db
):
    with db() as session:
        quotas.set_quota(session, tenant.id, quotas.running_jobs("test.sleep"), 1)
        session.commit()
    body = {"type": "test.sleep", "spec": {"seconds": 0.6, "steps": 2}}
    limited = [(await (await create_job(api, tenant, body)).json())["id"] for _ in range(3)]
    other = (await (await create_job(api, other_tenant, body)).json())["id"]
    done = await asyncio.gather(*(wait_done(api, tenant, j, timeout_s=60) for j in limited))
    assert all(job["status"] == "succeeded" and job["attempts"] == 1 for job in done), done
    with db() as session:
        spans = sorted(session.execute(select(Job.started_at, Job.finished_at).where(Job.id.in_(limited))).all())
        other_started = session.scalar(select(Job.started_at).where(Job.id == other))
    # one at a time: each of the tenant's jobs started after the one before it had finished
    assert all(later.started_at >= earlier.finished_at for earlier, later in itertools.pairwise(spans)), spans
    # the slot it could not use went to the other tenant, not to waiting
    assert other_started is not None and other_started < spans[-1].started_at


def test_a_worker_registers_its_queues_and_slots_and_leaves_the_registry_when_it_stops(settings, db, tmp_path):
    worker = Worker(settings, "test-recovery", tmp_path / "worker.log", concurrency=1)
    node = f"{socket.gethostname()}:{worker.process.pid}"

    def registered():
        with db() as session:
            return session.get(JobWorker, node)

    try:
        row = eventually(registered, 30, f"worker {node} to register")
        assert (row.queues, row.concurrency) == (["test-recovery"], 1)
    finally:
        worker.stop()
    assert registered() is None


async def test_jobs_no_worker_can_start_wait_in_postgresql_and_are_counted_as_demand(api, tenant, job_worker, db):
    # test-unclaimed has no worker: nothing is sent, the rows are the demand KEDA and /metrics count
    body = {"type": "test.unclaimed", "spec": {}}
    created = [(await (await create_job(api, tenant, body)).json())["id"] for _ in range(3)]
    # a job created after them ran: the dispatcher made passes since, and left them where they are
    assert (await wait_done(api, tenant, (await (await create_job(api, tenant, SHORT)).json())["id"]))[
        "status"
    ] == "succeeded"
    with db() as session:
        sent = session.scalar(
            select(func.count()).select_from(Job).where(Job.id.in_(created), Job.dispatched_at.is_not(None))
        )
        waiting = session.scalar(
            select(func.count()).select_from(Job).where(Job.type == "test.unclaimed", Job.status == "queued")
        )
    assert sent == 0
    metrics = await (await api.get("/metrics")).text()
    assert f'maas_jobs_waiting{{type="test.unclaimed"}} {float(waiting)}' in metrics
    assert f'maas_jobs{{status="queued",type="test.unclaimed"}} {float(waiting)}' in metrics


async def test_the_sdk_sends_priority_and_reads_it_back(api, tenant):
    async with AsyncClient(str(api.make_url("")).rstrip("/"), tenant.key) as maas:
        job = await maas.jobs.create("test.unclaimed", {}, priority=-20)
        assert job.priority == -20 and (await maas.jobs.get(job.id)).priority == -20
        with pytest.raises(ValidationError) as raised:
            await maas.jobs.create("test.unclaimed", {}, priority=500)
        assert raised.value.pointer == "/priority"
        await maas.jobs.cancel(job.id)
