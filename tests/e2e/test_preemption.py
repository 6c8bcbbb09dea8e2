"""A worker told to stop (SIGTERM to its main process, as Kubernetes and ``docker stop`` send it)
gives its running job back instead of sitting on it: a torchrun training job checkpoints at its
next sync step and a batch inference job saves the outputs so far; the job is queued again with
its attempt given back and a ``preempted`` event, the worker exits within the grace period, and
a second worker finishes the job from where the first stopped.

These tests use a broker of their own (RabbitMQ when configured, else another Redis database),
so that no session-wide worker of the same queue can take the jobs."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors

from api.app import create_app
from tests.support.api import (
    create_job,
    download_artifact,
    get_job,
    job_artifacts,
    job_events,
    register_version,
    upload,
    wait_done,
)
from tests.support.datasets import digits_bytes, npz
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS, linear_expected
from tests.support.processes import Worker

pytestmark = pytest.mark.slow
GRACE_S = 30


@pytest.fixture
def own_settings(settings, services):
    broker = services.rabbitmq_url or services.broker_url.rsplit("/", 1)[0] + "/9"
    return settings.model_copy(update={"broker_url": broker, "preempt_grace_s": GRACE_S})


@pytest.fixture
async def own_api(aiohttp_client, own_settings):
    return await aiohttp_client(create_app(own_settings))


async def sigterm_and_wait(worker: Worker) -> float:
    """SIGTERM the worker's main process only; how long it took to exit."""
    started = time.monotonic()
    os.kill(worker.process.pid, signal.SIGTERM)
    await asyncio.to_thread(worker.process.wait, GRACE_S + 30)
    return time.monotonic() - started


async def test_a_training_job_checkpoints_goes_back_to_the_queue_and_ends_as_if_never_stopped(
    own_api, tenant, own_settings, tmp_path
):
    api = own_api
    file_id = await upload(api, tenant, digits_bytes()[0], "digits.npz")
    spec = {
        "model": {"arch": "mlp", "hidden": [64, 32], "dropout": 0.1},
        "dataset": {"file_id": file_id},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"epochs": 12, "batch_size": 32, "seed": 3},
        "checkpoint_every_steps": 100_000,  # the only checkpoint is the one preemption asks for
    }
    first = Worker(own_settings, "training", tmp_path / "first.log", concurrency=1)
    try:
        job = await (await create_job(api, tenant, {"type": "training", "spec": spec})).json()

        async def training() -> bool:
            progress = (await get_job(api, tenant, job["id"]))["progress"]
            return bool(progress) and progress["step"] >= 20

        await eventually_async(training, 120, "the job to take its first steps")
        took = await sigterm_and_wait(first)
    finally:
        first.stop()
    assert took < GRACE_S, (took, (tmp_path / "first.log").read_text()[-3000:])
    stopped = await get_job(api, tenant, job["id"])
    assert stopped["status"] == "queued" and stopped["attempts"] == 0, stopped
    history = await job_events(api, tenant, job["id"])
    (preempted,) = [e for e in history if e["type"] == "preempted"]
    step = preempted["data"]["step"]
    assert preempted["message"] == f"checkpointed at step {step}"
    assert [e["data"]["step"] for e in history if e["type"] == "checkpoint"] == [step]
    assert not any(e["type"] == "status" and e["data"].get("status") == "failed" for e in history)

    second = Worker(own_settings, "training", tmp_path / "second.log", concurrency=1)
    try:
        done = await wait_done(api, tenant, job["id"], timeout_s=300)
        whole = await (await create_job(api, tenant, {"type": "training", "spec": spec})).json()
        whole = await wait_done(api, tenant, whole["id"], timeout_s=300)
    finally:
        second.stop()
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    resumed = [e for e in await job_events(api, tenant, job["id"]) if e["message"].startswith("resuming from")]
    assert len(resumed) == 1 and resumed[0]["data"]["resumed_from_step"] == step
    assert whole["status"] == "succeeded", whole

    def weights(job: dict) -> dict[str, torch.Tensor]:
        return load_safetensors(job["_weights"])

    done["_weights"] = await download_artifact(api, tenant, done["result"]["artifacts"]["weights"])
    whole["_weights"] = await download_artifact(api, tenant, whole["result"]["artifacts"]["weights"])
    expected = weights(whole)
    for name, value in weights(done).items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=1e-5, msg=name)


async def test_a_batch_inference_job_keeps_its_written_chunks_and_writes_each_once(
    own_api, tenant, own_settings, tmp_path
):
    api = own_api
    rows = 150_000
    name = "preempt-" + os.urandom(3).hex()
    await register_version(api, tenant, name, LINEAR_MODELS[0])
    x = np.random.default_rng(5).normal(size=(rows, 4)).astype(np.float32)
    file_id = await upload(api, tenant, npz(x=x), "rows.npz", "dataset")
    spec = {"model": {"name": name, "version": 1}, "dataset": {"file_id": file_id}, "chunk_rows": 2}
    first = Worker(own_settings, "inference", tmp_path / "first.log", concurrency=1)
    try:
        job = await (await create_job(api, tenant, {"type": "batch_inference", "spec": spec})).json()

        async def started() -> bool:
            progress = (await get_job(api, tenant, job["id"]))["progress"]
            return bool(progress) and progress["step"] > 0

        await eventually_async(started, 60, "the batch to make progress")
        took = await sigterm_and_wait(first)
    finally:
        first.stop()
    assert took < GRACE_S, (took, (tmp_path / "first.log").read_text()[-3000:])
    stopped = await get_job(api, tenant, job["id"])
    assert stopped["status"] == "queued" and stopped["attempts"] == 0, stopped
    (preempted,) = [e for e in await job_events(api, tenant, job["id"]) if e["type"] == "preempted"]
    saved = preempted["data"]["rows"]
    assert 0 < saved < rows and saved % 2 == 0, preempted

    second = Worker(own_settings, "inference", tmp_path / "second.log", concurrency=1)
    try:
        done = await wait_done(api, tenant, job["id"], timeout_s=300)
    finally:
        second.stop()
    assert done["status"] == "succeeded" and done["attempts"] == 1, done
    # the second attempt ran exactly the rows the first did not write
    assert done["metrics"]["resumed_rows"] == saved and done["metrics"]["rows"] == rows
    artifacts = await job_artifacts(api, tenant, job["id"])
    (predictions,) = [a for a in artifacts if a["kind"] == "predictions"]
    assert all(a["deleted_at"] for a in artifacts if a["kind"] == "checkpoint"), artifacts  # all carried over
    with np.load(io.BytesIO(await download_artifact(api, tenant, predictions["id"]))) as out:
        expected = linear_expected(x)
        np.testing.assert_allclose(out["scores"], expected["scores"], rtol=1e-6)
        np.testing.assert_array_equal(out["label"], expected["label"])
