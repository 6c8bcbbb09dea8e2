"""A worker killed while a checkpoint is being uploaded: that checkpoint is never the one the
job resumes from. A checkpoint becomes resumable only when its artifact row is written, after
its upload finished; the re-run starts from the newest one whose upload did finish."""

from __future__ import annotations

import glob
import tempfile
from pathlib import Path

import pytest

from tests.support.api import create_job, job_artifacts, job_events, upload, wait_done
from tests.support.datasets import digits_bytes
from tests.support.eventually import eventually_async
from tests.support.processes import Worker

pytestmark = pytest.mark.slow


def archives_in_flight(job_id: str) -> list[Path]:
    """The checkpoint archives the worker is uploading right now (``CheckpointUploads``
    writes ``step-N.tar`` in the job's folder and deletes it once its row is written)."""
    return [Path(p) for p in glob.glob(f"{tempfile.gettempdir()}/maas-{job_id}-*/step-*.tar")]


async def test_a_checkpoint_still_uploading_when_the_worker_dies_is_not_resumed_from(api, tenant, settings, tmp_path):
    file_id = await upload(api, tenant, digits_bytes()[0], "digits.npz")
    spec = {
        # wide layers: ~100 MB of weights and Adam state per checkpoint, so an upload takes a while
        "model": {"arch": "mlp", "hidden": [2048, 2048, 2048]},
        "dataset": {"file_id": file_id},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"epochs": 2, "batch_size": 64, "seed": 1},  # 50 steps, a checkpoint every 10
        "checkpoint_every_steps": 10,
        "checkpoint_every_seconds": 0,
        "checkpoints": {"keep_last": 100},
    }
    first = Worker(settings, "training", tmp_path / "first.log", concurrency=1)
    try:
        job = await (await create_job(api, tenant, {"type": "training", "spec": spec})).json()

        async def uploaded_one_and_uploading_another() -> bool:
            recorded = [e for e in await job_events(api, tenant, job["id"]) if e["type"] == "checkpoint"]
            return bool(recorded) and bool(archives_in_flight(job["id"]))

        await eventually_async(uploaded_one_and_uploading_another, 300, "a second checkpoint upload to begin")
        first.kill()
        in_flight = {int(p.stem.removeprefix("step-")) for p in archives_in_flight(job["id"])}
    finally:
        first.stop()
    recorded = {e["data"]["step"] for e in await job_events(api, tenant, job["id"]) if e["type"] == "checkpoint"}
    if in_flight <= recorded:
        pytest.skip("the upload finished between the check and the kill (rare); nothing to test this time")
    killed_step = max(in_flight - recorded)
    assert killed_step not in recorded
    artifacts = [a for a in await job_artifacts(api, tenant, job["id"]) if a["kind"] == "checkpoint"]
    assert len(artifacts) == len(recorded)  # no row for the half-uploaded one

    second = Worker(settings, "training", tmp_path / "second.log", concurrency=1)
    try:
        done = await wait_done(api, tenant, job["id"], timeout_s=900)
    finally:
        second.stop()
    assert done["status"] == "succeeded", done
    history = await job_events(api, tenant, job["id"])
    (resumed,) = [e for e in history if e["type"] == "log" and e["message"].startswith("resuming from checkpoint")]
    assert resumed["data"]["resumed_from_step"] == max(recorded) < killed_step
