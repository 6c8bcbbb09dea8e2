"""A training job over two nodes: two worker processes on this machine act as the nodes, one runs
the job's node 0 and hosts torchrun's c10d rendezvous, the other picks the second node's share off
the training queue and joins it."""

from __future__ import annotations

import pytest

from tests.support.api import create_job, job_events, wait_done
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
