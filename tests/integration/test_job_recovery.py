"""A worker killed with SIGKILL mid-job: the job is not lost, a new worker resumes it from its
last checkpoint, and it ends once, as attempt 2."""

from __future__ import annotations

import pytest

from tests.support.api import create_job, get_job, job_events, wait_done
from tests.support.eventually import eventually_async
from tests.support.processes import Worker

pytestmark = pytest.mark.slow


async def test_a_killed_worker_does_not_lose_its_job(api, tenant, settings, tmp_path, job_worker):
    first = Worker(settings, "test-recovery", tmp_path / "first.log", concurrency=1)
    try:
        job = await (
            await create_job(api, tenant, {"type": "test.checkpointed", "spec": {"seconds": 8, "steps": 10}})
        ).json()
        current: dict = {}

        async def going() -> bool:
            current.update(await get_job(api, tenant, job["id"]))
            return current["progress"]["step"] >= 3

        await eventually_async(going, 30, lambda: f"the job to get going: {current}")
        first.kill()
    finally:
        first.stop()

    second = Worker(settings, "test-recovery", tmp_path / "second.log", concurrency=1)
    try:
        done = await wait_done(api, tenant, job["id"], timeout_s=60)
    finally:
        second.stop()
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    resumed_from = done["result"]["resumed_from"]
    assert resumed_from >= 3

    history = await job_events(api, tenant, job["id"])
    statuses = [e["data"]["status"] for e in history if e["type"] == "status"]
    assert statuses[-1] == "succeeded"
    assert sum(s in ("succeeded", "failed", "canceled") for s in statuses) == 1
    assert statuses.count("running") == 2
    resumed = [e for e in history if e["type"] == "log" and e["message"].startswith("resuming")]
    assert resumed and resumed[0]["data"]["resumed_from"] == resumed_from
    steps = [e["data"]["step"] for e in history if e["type"] == "checkpoint"]
    assert steps[-1] == 10 and steps[steps.index(resumed_from) + 1] == resumed_from + 1
