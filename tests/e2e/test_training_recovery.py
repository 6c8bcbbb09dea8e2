"""A worker killed with SIGKILL during a torchrun training job: its torchrun and ranks stop, and the
job is re-run on a new worker and resumes from the last checkpoint the first attempt uploaded."""

from __future__ import annotations

import asyncio

import psutil
import pytest

from tests.support.api import create_job, job_events, upload, wait_done
from tests.support.datasets import digits_bytes
from tests.support.eventually import eventually_async
from tests.support.processes import Worker
from tests.support.training_runs import ranks_of

pytestmark = pytest.mark.slow


async def test_a_worker_killed_during_training_resumes_from_its_checkpoint(api, tenant, settings, tmp_path):
    file_id = await upload(api, tenant, digits_bytes()[0], "digits.npz")
    spec = {
        "model": {"arch": "mlp", "hidden": [128, 64]},
        "dataset": {"file_id": file_id},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"epochs": 40, "batch_size": 32, "seed": 1},
        "checkpoint_every_steps": 100,
        "checkpoint_every_seconds": 0,  # by steps alone
    }
    first = Worker(settings, "training", tmp_path / "first.log", concurrency=1)
    try:
        job = await (await create_job(api, tenant, {"type": "training", "spec": spec})).json()

        async def checkpointed() -> bool:
            return any(e["type"] == "checkpoint" for e in await job_events(api, tenant, job["id"]))

        await eventually_async(checkpointed, 120, "a checkpoint to be written")
        tree = psutil.Process(first.process.pid).children(recursive=True)
        assert len(ranks_of(first)) == 2
        first.kill()
    finally:
        first.stop()
    # torchrun runs in a session of its own; the death of the worker that started it stops it and its ranks
    _, left = await asyncio.to_thread(psutil.wait_procs, tree, 60)
    assert not left, [" ".join(p.cmdline()) for p in left]
    second = Worker(settings, "training", tmp_path / "second.log", concurrency=1)
    try:
        done = await wait_done(api, tenant, job["id"], timeout_s=600)
    finally:
        second.stop()
    assert done["status"] == "succeeded", done
    assert done["attempts"] == 2
    history = await job_events(api, tenant, job["id"])
    resumed = [e for e in history if e["type"] == "log" and e["message"].startswith("resuming from checkpoint")]
    assert len(resumed) == 1 and resumed[0]["data"]["resumed_from_step"] >= 100
    first_progress_after_resume = next(e for e in history[history.index(resumed[0]) :] if e["type"] == "progress")
    assert first_progress_after_resume["data"]["step"] > resumed[0]["data"]["resumed_from_step"]
