"""The README's tour through the SDK, against the real platform: the API, a training worker running
torchrun, a model server, an inference worker and the webhooks worker. Upload a dataset, train with
``wait``, download the ONNX artifact (sha256 checked), deploy it, ``infer`` and compare with ONNX
Runtime run on the downloaded file, then a prediction whose signed webhook ``webhooks.verify`` accepts.
Once with the blocking ``Client`` (in a thread: the API runs on the test's event loop), once with
``AsyncClient``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from maas_client import AsyncClient, Client, NotFound
from maas_client.webhooks import verify
from tests.support import webhook_receiver
from tests.support.datasets import digits_bytes
from tests.support.eventually import eventually_async
from tests.support.webhook_receiver import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("model_server", "inference_worker", "job_worker")]


def spec(file_id: str, name: str) -> dict:
    return {
        "model": {"arch": "mlp", "hidden": [32]},
        "dataset": {"file_id": file_id},
        "validation": {"fraction": 0.2},
        "strategy": {"kind": "ddp", "nproc_per_node": 1},
        "hyperparameters": {"epochs": 2, "batch_size": 64, "lr": 0.01, "optimizer": "adam", "seed": 0},
        "register_as": name,
    }


def onnx_runtime(path: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))


async def verified_deliveries(receiver: Receiver, secret: str, prediction_id: str) -> list[dict]:
    """The receiver's deliveries once the ``completed`` one came, each checked by ``webhooks.verify``."""

    def bodies() -> list[dict]:
        return [verify(body, headers, secret) for headers, body in receiver.requests]

    await eventually_async(lambda: any(b["event"] == "completed" for b in bodies()), 60, "the completed webhook")
    found = bodies()
    assert {b["id"] for b in found} == {prediction_id}
    return found


async def test_the_tour_with_the_blocking_client(api, tenant, training_worker, aiohttp_server, tmp_path):
    data, x, _ = digits_bytes()
    (tmp_path / "digits.npz").write_bytes(data)
    hook = await webhook_receiver.serve(aiohttp_server, receiver := Receiver())
    name = f"digits-sdk-{secrets.token_hex(3)}"

    def tour() -> dict:
        with Client(str(api.make_url("")), tenant.key) as maas:
            dataset = maas.files.upload(tmp_path / "digits.npz")
            job = maas.jobs.create("training", spec(dataset.id, name))
            job = maas.jobs.wait(job.id, timeout=600)
            assert job.status == "succeeded", job.error
            events = list(maas.jobs.events(job.id))
            artifacts = {a.kind: a for a in maas.jobs.artifacts(job.id)}
            model_path = maas.artifacts.download(artifacts["model"].id, tmp_path)
            version = maas.models.get_version(name, 1)
            maas.deployments.deploy(name, 1, max_batch_size=16)
            deployment = maas.deployments.wait_ready(name, 1)
            input_name = version.signature["inputs"][0]["name"]
            outputs = maas.infer(name, {input_name: x[:8]})
            prediction = maas.predictions.create(name, {input_name: x[:2]}, webhook=hook)
            prediction = maas.predictions.wait(prediction.id, timeout=60)
            return {
                "job": job,
                "events": events,
                "model_path": model_path,
                "model_artifact": artifacts["model"],
                "version": version,
                "deployment": deployment,
                "outputs": outputs,
                "prediction": prediction,
                "prediction_outputs": maas.predictions.outputs(prediction),
                "secret": maas.webhooks.secret().key,
                "models": [m.name for m in maas.models.list()],
            }

    seen = await asyncio.to_thread(tour)
    job, model_path = seen["job"], seen["model_path"]
    assert job.result["model_version"]["name"] == name and job.metrics["val_accuracy"] > 0.8
    assert seen["events"][0].type == "status" and seen["events"][-1].data["status"] == "succeeded"
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() == seen["model_artifact"].sha256
    assert seen["version"].sha256 == seen["model_artifact"].sha256 and name in seen["models"]
    assert seen["deployment"].status == "ready" and seen["deployment"].replicas[0].status == "ready"
    expected = onnx_runtime(model_path, x[:8])
    assert set(seen["outputs"]) == set(expected)
    for output, array in expected.items():
        np.testing.assert_allclose(seen["outputs"][output], array, rtol=1e-5, atol=1e-5)
    assert seen["prediction"].status == "succeeded"
    for output, array in onnx_runtime(model_path, x[:2]).items():
        np.testing.assert_allclose(seen["prediction_outputs"][output], array, rtol=1e-5, atol=1e-5)
    bodies = await verified_deliveries(receiver, seen["secret"], seen["prediction"].id)
    completed = next(b for b in bodies if b["event"] == "completed")
    assert completed["status"] == "succeeded" and completed["output"] == seen["prediction"].output


async def test_the_tour_with_the_async_client(api, tenant, training_worker, aiohttp_server, tmp_path):
    data, x, _ = digits_bytes()
    hook = await webhook_receiver.serve(aiohttp_server, receiver := Receiver())
    name = f"digits-async-{secrets.token_hex(3)}"
    async with AsyncClient(str(api.make_url("")), tenant.key) as maas:
        dataset = await maas.files.upload(data, filename="digits.npz")
        job = await maas.jobs.create("training", spec(dataset.id, name))
        progress = [e async for e in maas.jobs.events(job.id, stream=True) if e.type == "progress"]
        job = await maas.jobs.wait(job.id, timeout=60)
        assert job.status == "succeeded", job.error
        assert progress and progress[-1].data["step"] == job.progress.step
        model = next(a for a in await maas.jobs.artifacts(job.id) if a.kind == "model")
        model_path = await maas.artifacts.download(model.id, tmp_path / "model.onnx")
        input_name = (await maas.models.get_version(name, 1)).signature["inputs"][0]["name"]
        await maas.deployments.deploy(name, 1)
        await maas.deployments.wait_ready(name, 1)
        outputs = await maas.infer(name, {input_name: x[:8]})
        prediction = await maas.predictions.create(name, {input_name: x[:2]}, webhook=hook, wait=30)
        prediction = await maas.predictions.wait(prediction.id, timeout=60)
        secret = (await maas.webhooks.secret()).key
        assert [v.version for v in await maas.models.versions(name)] == [1]
        await maas.deployments.undeploy(name)
        with pytest.raises(NotFound):
            await maas.deployments.get(name)
    assert hashlib.sha256(model_path.read_bytes()).hexdigest() == model.sha256
    for output, array in onnx_runtime(model_path, x[:8]).items():
        np.testing.assert_allclose(outputs[output], array, rtol=1e-5, atol=1e-5)
    assert prediction.status == "succeeded"
    await verified_deliveries(receiver, secret, prediction.id)
