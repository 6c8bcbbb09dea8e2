"""Training jobs end to end: the API, PostgreSQL, the broker, S3, a Celery worker and torchrun on 2
processes. A digits CNN learns the digits and comes back as an ONNX file, a curve and a model
version; bad specs are refused before anything runs; a diverging run fails with a code."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import psutil
import pytest

from tests.support.api import (
    create_job,
    download_artifact,
    job_artifacts,
    job_events,
    upload,
    upload_raw,
    wait_done,
)
from tests.support.datasets import digits_bytes, npz
from tests.support.eventually import eventually_async
from tests.support.processes import Worker
from tests.support.training_runs import ranks_of, running

pytestmark = pytest.mark.slow

CNN = {"arch": "cnn", "channels": [32, 64], "kernel_size": 3}


async def test_a_digits_cnn_trained_with_ddp_on_two_processes(api, tenant, training_worker, tmp_path):
    file_id = await upload(api, tenant, digits_bytes()[0], "digits.npz")
    spec = {
        "model": CNN,
        "dataset": {"file_id": file_id},
        "validation": {"fraction": 0.2},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"epochs": 15, "batch_size": 32, "lr": 0.001, "optimizer": "adam", "seed": 0},
        "checkpoint_every_steps": 200,
        "checkpoint_every_seconds": 0,  # by steps alone
        "register_as": "digits-cnn",
    }
    response = await create_job(api, tenant, {"type": "training", "spec": spec})
    assert response.status == 201, await response.text()
    job = await wait_done(api, tenant, (await response.json())["id"], timeout_s=600)
    assert job["status"] == "succeeded", job
    metrics = job["result"]["metrics"]
    assert metrics["val_accuracy"] >= 0.97
    assert metrics["onnx_max_abs_diff"] <= 1e-4
    assert job["metrics"]["val_accuracy"] == metrics["val_accuracy"]
    assert job["progress"]["step"] == job["progress"]["total_steps"]

    history = await job_events(api, tenant, job["id"])
    progress = [e for e in history if e["type"] == "progress"]
    assert progress and {"loss", "accuracy", "samples_per_s", "epoch"} <= set(progress[0]["data"])
    assert [e["data"]["step"] for e in history if e["type"] == "checkpoint"][:2] == [200, 400]

    artifacts = {a["kind"]: a for a in await job_artifacts(api, tenant, job["id"])}
    assert {"model", "plot", "weights", "checkpoint"} <= set(artifacts)
    model_bytes = await download_artifact(api, tenant, job["result"]["artifacts"]["model"])
    (tmp_path / "model.onnx").write_bytes(model_bytes)
    onnx.checker.check_model(str(tmp_path / "model.onnx"))
    _, x, y = digits_bytes()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert (logits.argmax(1) == y).mean() >= 0.97
    assert (await download_artifact(api, tenant, job["result"]["artifacts"]["curves"]))[:8] == b"\x89PNG\r\n\x1a\n"

    version = await (await api.get("/v1/models/digits-cnn/versions/1", headers=tenant.headers)).json()
    assert version["lineage"]["source_job_id"] == job["id"]
    assert version["signature"]["inputs"][0]["shape"] == [-1, 64]
    assert version["metrics"]["val_accuracy"] == metrics["val_accuracy"]


async def test_bad_training_specs_are_422_before_anything_runs(api, tenant, other_tenant, settings):
    file_id = await upload(api, tenant, digits_bytes()[0], "digits.npz")
    base = {
        "model": CNN,
        "dataset": {"file_id": file_id},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"batch_size": 128},
    }
    cases = [
        ({**base, "model": {"arch": "resnet152"}}, "/spec/model/arch"),
        ({**base, "model": {**CNN, "kernel_size": 4}}, "/spec/model/kernel_size"),
        (
            {**base, "strategy": {"kind": "ddp", "nproc_per_node": settings.max_nproc_per_node * 2}},
            "/spec/strategy/nproc_per_node",
        ),
        ({**base, "strategy": {"kind": "ddp", "nnodes": settings.max_nnodes * 2}}, "/spec/strategy/nnodes"),
        (
            {
                **base,
                "model": {"arch": "mlp", "hidden": [32]},
                "strategy": {"kind": "pipeline", "nproc_per_node": 2, "pipeline_stages": 3},
            },
            "/spec/strategy/pipeline_stages",
        ),
        ({**base, "dataset": {"file_id": "file_" + "0" * 26}}, "/spec/dataset/file_id"),
        # the training options: 64 rows per process do not split into 3 chunks; ~120 steps leave no
        # room for 10000 warm-up steps; this platform's workers have no CUDA for fp16
        (
            {**base, "hyperparameters": {"batch_size": 128, "grad_accumulation_steps": 3}},
            "/spec/hyperparameters/grad_accumulation_steps",
        ),
        (
            {**base, "hyperparameters": {"batch_size": 128, "lr_schedule": {"warmup_steps": 10_000}}},
            "/spec/hyperparameters/lr_schedule/warmup_steps",
        ),
        ({**base, "hyperparameters": {"batch_size": 128, "precision": "fp16"}}, "/spec/hyperparameters/precision"),
        (
            {**base, "hyperparameters": {"batch_size": 128, "early_stopping": {"metric": "val_loss", "mode": "max"}}},
            "/spec/hyperparameters/early_stopping/mode",
        ),
        ({**base, "hyperparameters": {"batch_size": 128, "grad_clip_norm": 0}}, "/spec/hyperparameters/grad_clip_norm"),
        ({**base, "checkpoint_every_seconds": -1}, "/spec/checkpoint_every_seconds"),
    ]
    for spec, pointer in cases:
        response = await create_job(api, tenant, {"type": "training", "spec": spec})
        assert response.status == 422, (pointer, await response.text())
        assert pointer in [e["pointer"] for e in (await response.json())["errors"]], pointer
    foreign = await create_job(api, other_tenant, {"type": "training", "spec": base})
    assert foreign.status == 422
    csv = await upload_raw(api, tenant, b"a,b\n1,2\n3,4\n", "d.csv")
    no_label = await create_job(
        api,
        tenant,
        {
            "type": "training",
            "spec": {**base, "dataset": {"file_id": (await csv.json())["id"], "label_column": "label"}},
        },
    )
    assert no_label.status == 422
    assert "/spec/dataset/label_column" in [e["pointer"] for e in (await no_label.json())["errors"]]
    listed = await (await api.get("/v1/jobs", params={"type": "training"}, headers=tenant.headers)).json()
    assert listed["data"] == []


async def test_a_diverging_run_fails_with_nan_loss(api, tenant, training_worker):
    x = np.random.default_rng(0).normal(size=(200, 8)).astype(np.float32) * 1e30
    huge = await upload_raw(api, tenant, npz(X=x, y=np.arange(200) % 2), "huge.npz")
    spec = {
        "model": {"arch": "mlp", "hidden": [16]},
        "dataset": {"file_id": (await huge.json())["id"]},
        "hyperparameters": {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "lr": 0.5},
    }
    job = await (await create_job(api, tenant, {"type": "training", "spec": spec})).json()
    done = await wait_done(api, tenant, job["id"], timeout_s=120)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "nan_loss"


async def _started_training(api, tenant, worker: Worker, epochs: int) -> tuple[str, list[psutil.Process]]:
    spec = {
        "model": {"arch": "mlp", "hidden": [128]},
        "dataset": {"builtin": "digits"},
        "strategy": {"kind": "ddp", "nproc_per_node": 2},
        "hyperparameters": {"epochs": epochs, "batch_size": 32},
    }
    job = await (await create_job(api, tenant, {"type": "training", "spec": spec})).json()

    async def progressing() -> bool:
        return any(e["type"] == "progress" for e in await job_events(api, tenant, job["id"]))

    await eventually_async(progressing, 60, "training to start")
    return job["id"], ranks_of(worker)


async def test_cancel_stops_every_rank(api, tenant, training_worker):
    job_id, ranks = await _started_training(api, tenant, training_worker, epochs=500)
    assert len(ranks) == 2
    await api.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)
    done = await wait_done(api, tenant, job_id, timeout_s=30)
    assert done["status"] == "canceled"
    await eventually_async(
        lambda: not [p for p in ranks if running(p)],
        5,
        lambda: f"every rank to stop: {[p.pid for p in ranks if running(p)]} still run",
    )
    assert not [p.pid for p in ranks if running(p)]


async def test_a_crashed_rank_fails_the_job_with_the_log_tail(api, tenant, training_worker):
    job_id, ranks = await _started_training(api, tenant, training_worker, epochs=500)
    ranks[-1].kill()
    done = await wait_done(api, tenant, job_id, timeout_s=120)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "worker_crashed"
    assert done["error"]["log_tail"], done["error"]
