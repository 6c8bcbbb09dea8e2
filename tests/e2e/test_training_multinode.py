"""A training job over two nodes: two worker processes on this machine act as the nodes, one runs
the job's node 0 and hosts torchrun's c10d rendezvous, the other picks the second node's share off
the training queue and joins it."""

from __future__ import annotations

import pytest

from tests.support.api import create_job, get_job, job_events, upload, wait_done
from tests.support.datasets import digits_bytes
from tests.support.eventually import eventually_async
from tests.support.processes import Worker

pytestmark = pytest.mark.slow


async def test_two_nodes_train_one_model(api, tenant, settings, tmp_path):
    workers = [Worker(settings, "training", tmp_path / f"node{i}.log", concurrency=1) for i in range(2)]
    try:
        spec = {
            "model": {"arch": "mlp", "hidden": [64]},
            "dataset": {"builtin": "digits"},
            "strategy": {"kind": "ddp", "nproc_per_node": 1, "nnodes": 2},
            "hyperparameters": {"epochs": 3, "batch_size": 32},
            "checkpoint_every_steps": 50,
            "checkpoint_every_seconds": 0,  # by steps alone
        }
        job = await (await create_job(api, tenant, {"type": "training", "spec": spec})).json()
        done = await wait_done(api, tenant, job["id"], timeout_s=300)
    finally:
        for worker in workers:
            worker.stop()
    history = await job_events(api, tenant, job["id"])
    assert done["status"] == "succeeded", (done, [e["message"] for e in history][-30:])
    assert done["result"]["metrics"]["val_accuracy"] > 0.8
    assert any(e["message"].startswith("node 0 of 2: rendezvous at") for e in history)
    finished = [e for e in history if e["message"].startswith("node 1 finished")]
    assert len(finished) == 1 and finished[0]["data"]["exit_code"] == 0
    assert next(e["data"]["step"] for e in history if e["type"] == "checkpoint") == 50
    assert any(e["type"] == "progress" for e in history)
    assert not (settings.shared_training_dir / f"{job['id']}-1").exists()


async def test_a_node_without_memory_for_the_data_fails_the_job_at_once(api, tenant, settings, tmp_path):
    """Node 1's worker counts on 1 kB: it fails the job with ``dataset_too_large`` before torchrun
    starts, and node 0 stops instead of waiting out the rendezvous (300 s)."""
    file_id = await upload(api, tenant, digits_bytes()[0], "digits.npz")
    workers = [Worker(settings, "training", tmp_path / "node0.log", concurrency=1)]
    try:
        spec = {
            "model": {"arch": "mlp", "hidden": [16]},
            "dataset": {"file_id": file_id},
            "strategy": {"kind": "ddp", "nproc_per_node": 1, "nnodes": 2},
            "hyperparameters": {"epochs": 1, "batch_size": 32},
        }
        job = await (await create_job(api, tenant, {"type": "training", "spec": spec})).json()

        async def running() -> bool:
            return (await get_job(api, tenant, job["id"]))["status"] == "running"

        await eventually_async(running, 60, "node 0 to start")
        small = settings.model_copy(update={"worker_memory_bytes": 1000})
        workers.append(Worker(small, "training", tmp_path / "node1.log", concurrency=1))
        done = await wait_done(api, tenant, job["id"], timeout_s=90)
    finally:
        for worker in workers:
            worker.stop()
    assert done["status"] == "failed", done
    assert done["error"]["code"] == "dataset_too_large"
    assert done["error"]["node"] == 1
    assert done["error"]["available_bytes"] == 1000
    assert "the worker has 1.0 kB available" in done["error"]["message"]
