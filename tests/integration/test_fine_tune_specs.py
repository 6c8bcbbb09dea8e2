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


async def test_an_uploaded_text_model_is_compressed_from_token_ids_or_texts(api, tenant):
    """Its eval data feed the graph's own input (``input_ids``), or hold texts (an array named
    after the input clients send, ``text``) that the worker tokenizes with the model's tokenizer."""
    import numpy as np

    from tests.support.datasets import npz
    from tests.support.text_models import token_count_model

    model_id = await upload(api, tenant, token_count_model(), "count.onnx", purpose="model")
    ids = np.array([[101, 7592, 102, 0], [101, 2088, 1012, 102]], dtype=np.int64)
    texts = np.array(["a text", "another"])
    spec = {"source": {"file_id": model_id}, "passes": [{"kind": "quantize", "mode": "fp16"}]}
    for arrays in ({"input_ids": ids}, {"text": texts}):
        eval_id = await upload(api, tenant, npz(**arrays), "eval.npz")
        created = await create_job(api, tenant, {"type": "compression", "spec": {**spec, "eval": {"file_id": eval_id}}})
        assert created.status == 201, await created.text()
        await api.post(f"/v1/jobs/{(await created.json())['id']}/cancel", headers=tenant.headers)
    other_id = await upload(api, tenant, npz(words=texts), "words.npz")
    refused = await create_job(api, tenant, {"type": "compression", "spec": {**spec, "eval": {"file_id": other_id}}})
    assert refused.status == 422 and "input_ids" in await refused.text()


async def test_a_regression_head_on_words_or_watching_accuracy_is_a_422(api, tenant):
    """A parquet's label types are known at upload: a regression head on a column of words is
    refused before a job exists (a csv's are typed when read: the job fails at the same field)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    def parquet(labels: list[object]) -> bytes:
        out = io.BytesIO()
        pq.write_table(pa.table({"text": ["A sentence.", "Another one."] * 4, "score": labels * 4}), out)
        return out.getvalue()

    regression = {**TEXT_MODEL, "head": "regression"}
    words_id = await upload(api, tenant, parquet(["good", "bad"]), "words.parquet")
    spec = {
        "model": regression,
        "dataset": {"file_id": words_id, "text_column": "text", "label_column": "score"},
        "hyperparameters": {"batch_size": 2},
    }
    (problem,) = await problems(api, tenant, spec)
    assert problem == {
        "pointer": "/spec/dataset/label_column",
        "detail": "column 'score' has type string; a regression head needs numeric labels",
    }
    numbers_id = await upload(api, tenant, parquet([0.5, 2.0]), "scores.parquet")
    numbers = {**spec, "dataset": {**spec["dataset"], "file_id": numbers_id}}
    watching = {**numbers, "hyperparameters": {"batch_size": 2, "early_stopping": {"metric": "val_accuracy"}}}
    (metric,) = await problems(api, tenant, watching)
    assert metric["pointer"] == "/spec/hyperparameters/early_stopping/metric"
    assert metric["detail"] == "a regression head reports val_loss, val_mae, val_rmse, val_r2; not val_accuracy"
    created = await create_job(api, tenant, {"type": "training", "spec": numbers})
    assert created.status == 201, await created.text()
    await api.post(f"/v1/jobs/{(await created.json())['id']}/cancel", headers=tenant.headers)
