"""The fine-tuning checks the API makes before a training job exists (real Postgres, no worker):
a text column that is not in the uploaded file, ``init_from`` a version that no training job
made, another tenant's model, a version that does not exist."""

from __future__ import annotations

from typing import Any

from tests.support.api import create_job, register_version, upload
from tests.support.onnx_models import tiny_onnx
from tests.support.text_datasets import text_csv

TEXT_MODEL = {"arch": "text_encoder", "pretrained": "all-minilm-l6-v2", "max_length": 16}


async def problems(api, tenant, spec: dict[str, Any]) -> list[dict[str, str]]:
    response = await create_job(api, tenant, {"type": "training", "spec": spec})
    assert response.status == 422, await response.text()
    return (await response.json())["errors"]


async def test_a_text_column_that_is_not_in_the_file_is_a_422(api, tenant):
    data_id = await upload(api, tenant, text_csv([("A sentence.", "a"), ("Another one.", "b")] * 4), "t.csv")
    spec = {
        "model": TEXT_MODEL,
        "dataset": {"file_id": data_id, "text_column": "body", "label_column": "source"},
        "hyperparameters": {"batch_size": 2},
    }
    (problem,) = await problems(api, tenant, spec)
    assert problem["pointer"] == "/spec/dataset/text_column"
    assert problem["detail"] == "there is no column 'body'; columns are text, source"
    no_label = {**spec, "dataset": {"file_id": data_id, "text_column": "text"}}
    assert [p["pointer"] for p in await problems(api, tenant, no_label)] == ["/spec/dataset"]
    numbers = {**spec, "model": {"arch": "mlp"}, "dataset": {**spec["dataset"], "text_column": "text"}}
    assert [p["pointer"] for p in await problems(api, tenant, numbers)] == ["/spec/dataset/text_column"]
    listed = await (await api.get("/v1/jobs", params={"type": "training"}, headers=tenant.headers)).json()
    assert listed["data"] == []


async def test_init_from_needs_a_version_a_training_job_made_for_this_tenant(api, tenant, other_tenant):
    await register_version(api, tenant, "uploaded", tiny_onnx())
    spec = {"model": {"arch": "mlp"}, "dataset": {"builtin": "digits"}}
    (uploaded,) = await problems(api, tenant, {**spec, "init_from": {"model": "uploaded", "version": 1}})
    assert uploaded["pointer"] == "/spec/init_from/version"
    assert "has no zoo weights to start from" in uploaded["detail"]
    (missing,) = await problems(api, tenant, {**spec, "init_from": {"model": "uploaded", "version": 2}})
    assert missing == {"pointer": "/spec/init_from/version", "detail": "model 'uploaded' has no version 2"}
    (foreign,) = await problems(api, other_tenant, {**spec, "init_from": {"model": "uploaded", "version": 1}})
    assert foreign == {"pointer": "/spec/init_from/model", "detail": "no model 'uploaded'"}
