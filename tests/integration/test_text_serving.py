"""A text model (its tokenizer declared in the ONNX file, ``core.text_model``) served like any
other version: uploaded and registered, its signature shows clients one BYTES input, a model
server tokenizes the strings of each batch, and a batch inference job runs it over an npz of
texts. The model is tiny (it counts each text's tokens), so what the server tokenized is visible
in the answer."""

from __future__ import annotations

import io
import secrets

import numpy as np
import pytest

from tests.support.api import deploy_ready, download_artifact, infer, register_version, run_job, upload
from tests.support.datasets import npz
from tests.support.text_models import token_count_model

pytestmark = pytest.mark.usefixtures("model_server", "inference_worker")

TEXTS = ["Hello world.", "caf\u00e9", "word " * 50, ""]
COUNTS = [5, 3, 8, 2]  # [CLS] hello world . [SEP]; [CLS] cafe [SEP]; cut at max_length 8; [CLS] [SEP]


async def test_strings_in_tokens_counted_through_v2_and_a_batch_job(api, tenant):
    name = f"count-{secrets.token_hex(3)}"
    version = await register_version(api, tenant, name, token_count_model(max_length=8))
    assert version["signature"]["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert version["signature"]["graph_inputs"] == [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}]

    await deploy_ready(api, tenant, name, 1, max_batch_size=8)
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(TEXTS)], "data": TEXTS}]}
    response = await infer(api, tenant, name, body)
    assert response.status == 200, await response.text()
    (output,) = (await response.json())["outputs"]
    assert output["name"] == "count" and output["data"] == COUNTS
    numbers = {"inputs": [{"name": "text", "datatype": "INT64", "shape": [1], "data": [3]}]}
    refused = await infer(api, tenant, name, numbers)
    assert refused.status == 400 and "text" in (await refused.json())["error"]

    file_id = await upload(api, tenant, npz(text=np.array(TEXTS * 25)), "texts.npz")
    job = await run_job(
        api,
        tenant,
        {"type": "batch_inference", "spec": {"model": {"name": name, "version": 1}, "dataset": {"file_id": file_id}}},
        timeout_s=120,
    )
    assert job["status"] == "succeeded", job
    with np.load(io.BytesIO(await download_artifact(api, tenant, job["result"]["artifact"]["id"]))) as out:
        assert out["count"].tolist() == COUNTS * 25
