"""A compression job whose worker is told to stop (SIGTERM to its main process) after its first
pass: the run so far is a checkpoint, the job goes back to the queue with its attempt given
back, and a second worker resumes after the saved passes (an event says which it skipped) and
ends with the report of an uninterrupted run of the same spec. The API, PostgreSQL, the broker,
S3 and real Celery workers on the compression queue."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save
from sklearn.datasets import load_digits

from compression.finetune import finetune
from tests.support.api import create_job, get_job, job_artifacts, job_events, upload, wait_done
from tests.support.eventually import eventually_async
from tests.support.processes import Worker
from training.spec import MLPSpec
from training.zoo import build_model

pytestmark = pytest.mark.slow
GRACE_S = 30
MLP = {"arch": "mlp", "hidden": [32]}
PASSES = [
    {"kind": "prune", "amount": 0.5, "fine_tune_epochs": 1},
    {"kind": "distill", "student": {"arch": "mlp", "hidden": [12]}, "epochs": 40, "lr": 0.01},
    {"kind": "quantize", "mode": "dynamic"},
]
COMPARED = ("stage", "kind", "parameters", "nonzero_parameters", "onnx_bytes", "accuracy", "mean_cosine", "options")


def state_dict() -> bytes:
    digits = load_digits()
    x, y = torch.from_numpy((digits.data / 16.0).astype(np.float32)), torch.from_numpy(digits.target)
    torch.manual_seed(0)
    model = build_model(MLPSpec.model_validate(MLP), 64, 10)
    finetune(model, x, y, epochs=5, lr=3e-3)
    return save({name: t.contiguous() for name, t in model.state_dict().items()})


def compared(job: dict) -> list[dict]:
    return [{key: row[key] for key in COMPARED} for row in job["result"]["report"]["stages"]]


async def test_a_compression_job_preempted_after_a_pass_resumes_after_it_and_ends_as_if_never_stopped(
    api, tenant, settings, tmp_path
):
    own = settings.model_copy(update={"preempt_grace_s": GRACE_S})
    file_id = await upload(api, tenant, state_dict(), "mlp.safetensors", "model")
    spec = {
        "source": {"file_id": file_id, "arch": MLP},
        "passes": PASSES,
        "dataset": {"builtin": "digits"},
        "eval": {"builtin": "digits"},
        "measurement": {"latency_iterations": 20, "throughput_iterations": 5, "warmup": 2},
        "accuracy_floor": {"max_drop": None},
    }
    first = Worker(own, "compression", tmp_path / "first.log", concurrency=1)
    try:
        job = await (await create_job(api, tenant, {"type": "compression", "spec": spec})).json()

        async def first_pass_saved() -> bool:
            return any(e["type"] == "checkpoint" for e in await job_events(api, tenant, job["id"]))

        await eventually_async(first_pass_saved, 120, "the checkpoint after the first pass")
        started = time.monotonic()
        os.kill(first.process.pid, signal.SIGTERM)
        await asyncio.to_thread(first.process.wait, GRACE_S + 30)
        took = time.monotonic() - started
    finally:
        first.stop()
    assert took < GRACE_S, (took, (tmp_path / "first.log").read_text()[-3000:])
    stopped = await get_job(api, tenant, job["id"])
    assert stopped["status"] == "queued" and stopped["attempts"] == 0, stopped
    history = await job_events(api, tenant, job["id"])
    (preempted,) = [e for e in history if e["type"] == "preempted"]
    saved = preempted["data"]["passes_done"]
    assert 1 <= saved < len(PASSES), preempted
    assert preempted["message"] == f"passes 1-{saved} are saved; the job resumes after pass {saved}"
    assert [e["data"]["passes_done"] for e in history if e["type"] == "checkpoint"] == list(range(1, saved + 1))

    second = Worker(own, "compression", tmp_path / "second.log", concurrency=1)
    try:
        done = await wait_done(api, tenant, job["id"], timeout_s=300)
        whole = await (await create_job(api, tenant, {"type": "compression", "spec": spec})).json()
        whole = await wait_done(api, tenant, whole["id"], timeout_s=300)
    finally:
        second.stop()
    assert done["status"] == "succeeded" and done["attempts"] == 1, json.dumps(done, indent=1)[-3000:]
    assert whole["status"] == "succeeded", json.dumps(whole, indent=1)[-3000:]

    history = await job_events(api, tenant, job["id"])
    (resumed,) = [e for e in history if e["data"].get("resumed_passes") is not None]
    skipped = [f"{i + 1}. {p['kind']}" for i, p in enumerate(PASSES[:saved])]
    assert resumed["data"]["resumed_passes"] == saved and resumed["data"]["skipped"] == skipped, resumed
    # the saved passes were started once; the one the first worker was stopped in, again by the second
    names = [f"{i + 1}. {p['kind']}" for i, p in enumerate(PASSES)]
    starts = [e["data"]["stage"] for e in history if e["type"] == "progress" and e["data"].get("status") == "running"]
    assert starts == names[: saved + 1] + names[saved:], starts

    assert compared(done) == compared(whole)
    assert all(row["latency_p50_ms"] for row in done["result"]["report"]["stages"])  # every stage's model measured
    artifacts = await job_artifacts(api, tenant, job["id"])
    checkpoints = [a for a in artifacts if a["kind"] == "checkpoint"]
    assert checkpoints and all(a["deleted_at"] for a in checkpoints), artifacts
