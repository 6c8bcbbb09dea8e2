"""Batch inference jobs through real HTTP, Postgres, the broker, S3 and a Celery worker on the
inference queue: outputs equal ONNX Runtime's on the same rows, the deployed version is the
default, progress is reported, bad specs are 422s that create nothing, and a cancel stops a run."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select

from core.models import Job
from tests.support.api import (
    create_job,
    deploy,
    download_artifact,
    get_job,
    job_artifacts,
    job_events,
    register_version,
    run_job,
    upload,
    wait_done,
)
from tests.support.datasets import npz
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS, masked_sum

pytestmark = pytest.mark.usefixtures("inference_worker")
RNG = np.random.default_rng(3)


async def finished(api, tenant, spec: dict, timeout_s: float = 90) -> dict:
    return await run_job(api, tenant, {"type": "batch_inference", "spec": spec}, timeout_s=timeout_s)


async def test_a_multi_input_npz_gives_what_onnx_runtime_gives_with_progress(api, tenant):
    name = "pair-" + RNG.bytes(3).hex()
    await register_version(api, tenant, name, masked_sum())
    ids = RNG.integers(0, 30_000, size=(1000, 8))
    mask = (RNG.random((1000, 8)) > 0.3).astype(np.int32)  # int32 on disk, INT64 in the model
    file_id = await upload(api, tenant, npz(input_ids=ids, attention_mask=mask), "tokens.npz", "dataset")
    job = await finished(
        api,
        tenant,
        {
            "model": {"name": name, "version": 1},
            "dataset": {"file_id": file_id, "inputs": {"ids": "input_ids", "mask": "attention_mask"}},
            "chunk_rows": 64,
        },
    )
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["rows"] == 1000 and result["model"]["version"] == 1 and result["outputs"] == ["masked", "total"]
    assert job["progress"]["step"] == 1000 and job["progress"]["total_steps"] == 1000
    assert job["metrics"]["rows"] == 1000

    with np.load(io.BytesIO(await download_artifact(api, tenant, result["artifact"]["id"]))) as out:
        masked, total = ort.InferenceSession(masked_sum(), providers=["CPUExecutionProvider"]).run(
            None, {"ids": ids, "mask": mask.astype(np.int64)}
        )
        np.testing.assert_array_equal(out["masked"], masked)
        np.testing.assert_array_equal(out["total"], total)
    progress = [e for e in await job_events(api, tenant, job["id"]) if e["type"] == "progress"]
    assert progress and progress[-1]["data"]["step"] == 1000
    assert [e["data"]["step"] for e in progress] == sorted(e["data"]["step"] for e in progress)
    artifacts = await job_artifacts(api, tenant, job["id"])
    assert [(a["kind"], a["name"]) for a in artifacts] == [("predictions", "predictions.npz")]


async def test_a_csv_runs_on_the_deployed_version_into_parquet(api, tenant):
    name = "lin-" + RNG.bytes(3).hex()
    await register_version(api, tenant, name, LINEAR_MODELS[0])
    await register_version(api, tenant, name, LINEAR_MODELS[1])
    await deploy(api, tenant, name, 2)
    x = RNG.normal(size=(300, 4)).astype(np.float32)
    lines = ["id,f0,f1,f2,f3"] + [f"{i},{r[0]!r},{r[1]!r},{r[2]!r},{r[3]!r}" for i, r in enumerate(x.tolist())]
    file_id = await upload(api, tenant, ("\n".join(lines) + "\n").encode(), "rows.csv", "dataset")
    job = await finished(
        api,
        tenant,
        {
            "model": {"name": name},
            "dataset": {"file_id": file_id, "columns": ["f0", "f1", "f2", "f3"]},
            "output": {"format": "parquet", "outputs": ["scores"]},
            "chunk_rows": 128,
        },
    )
    assert job["status"] == "succeeded", job
    assert job["result"]["model"]["version"] == 2  # the deployed one
    table = pq.read_table(io.BytesIO(await download_artifact(api, tenant, job["result"]["artifact"]["id"])))
    assert table.column_names == ["scores"]
    scores = np.array(table.column("scores").to_pylist(), dtype=np.float32)
    session = ort.InferenceSession(LINEAR_MODELS[1], providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(scores, session.run(["scores"], {"x": x})[0], rtol=1e-6)


async def test_bad_batch_specs_are_422_naming_the_field_and_create_nothing(api, tenant, other_tenant, db):
    name = "lin-" + RNG.bytes(3).hex()
    pair = "pair-" + RNG.bytes(3).hex()
    await register_version(api, tenant, name, LINEAR_MODELS[0])
    await register_version(api, tenant, pair, masked_sum())
    csv_id = await upload(api, tenant, b"a,b,c,d,label\n1,2,3,4,0\n", "d.csv", "dataset")
    wide_id = await upload(api, tenant, b"a,b,c\n1,2,3\n", "w.csv", "dataset")
    foreign = await upload(api, other_tenant, b"a,b,c,d\n1,2,3,4\n", "f.csv", "dataset")

    def spec(model: dict, file_id: str = csv_id, **extra) -> dict:
        return {"model": model, "dataset": {"file_id": file_id}, **extra}

    cases = [
        (spec({"name": "nope"}), "/spec/model/name", "no model"),
        (spec({"name": name}), "/spec/model/version", "not deployed"),
        (spec({"name": name, "version": 9}), "/spec/model/version", "no version 9"),
        (spec({"name": name, "version": 1}, foreign), "/spec/dataset/file_id", "no file"),
        (spec({"name": pair, "version": 1}), "/spec/dataset/file_id", "give a .npz"),
        (spec({"name": name, "version": 1}, wide_id), "/spec/dataset/columns", "3 columns"),
        (spec({"name": name, "version": 1}, output={"outputs": ["probs"]}), "/spec/output/outputs/0", "no output"),
        (spec({"name": name, "version": 1}, chunk_rows=0), "/spec/chunk_rows", ""),
        (spec({"name": name, "version": 1}, output={"format": "hdf5"}), "/spec/output/format", ""),
    ]
    for body, pointer, words in cases:
        response = await create_job(api, tenant, {"type": "batch_inference", "spec": body})
        assert response.status == 422, (body, await response.text())
        errors = (await response.json())["errors"]
        assert any(e["pointer"] == pointer and words in e["detail"] for e in errors), (pointer, errors)
    with db() as session:
        assert session.scalars(select(Job).where(Job.tenant_id == tenant.id)).all() == []


async def test_cancel_stops_a_running_batch(api, tenant):
    name = "lin-" + RNG.bytes(3).hex()
    await register_version(api, tenant, name, LINEAR_MODELS[0])
    file_id = await upload(api, tenant, npz(x=RNG.normal(size=(400_000, 4)).astype(np.float32)), "big.npz", "dataset")
    response = await create_job(api, tenant, {"type": "batch_inference", "spec": spec_for(name, file_id, chunk_rows=1)})
    job_id = (await response.json())["id"]
    job: dict = {}

    async def started() -> bool:
        job.update(await get_job(api, tenant, job_id))
        return bool(job["progress"] and job["progress"]["step"])

    await eventually_async(started, 60, lambda: f"the batch to make progress: {job}")
    assert job["status"] == "running" and 0 < job["progress"]["step"] < 400_000
    assert (await api.post(f"/v1/jobs/{job_id}/cancel", headers=tenant.headers)).status == 200
    job = await wait_done(api, tenant, job_id, timeout_s=30)
    assert job["status"] == "canceled"
    assert await job_artifacts(api, tenant, job_id) == []


def spec_for(name: str, file_id: str, **extra) -> dict:
    return {"model": {"name": name, "version": 1}, "dataset": {"file_id": file_id}, **extra}
