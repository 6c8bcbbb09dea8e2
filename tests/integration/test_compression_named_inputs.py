"""Compression jobs for a model with two inputs (``input_ids`` and ``attention_mask``, like a
sentence encoder), refused through ``POST /v1/jobs`` before anything is created when their npz
files do not feed its inputs: each problem names its JSON pointer in the spec, with the rules
and words of batch inference. No worker runs here: every refusal comes from the pre-create check."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.api import cancel_job, create_job, register_version, upload
from tests.support.compression_models import masked_mean_encoder, token_batch
from tests.support.datasets import npz

GOOD = token_batch(16)


@pytest.fixture
async def encoder(api, tenant, tmp_path) -> str:
    path = masked_mean_encoder(tmp_path / "encoder.onnx")
    await register_version(api, tenant, "encoder", path.read_bytes())
    return "encoder"


async def refusal(api, tenant, spec: dict) -> list[dict]:
    response = await create_job(api, tenant, {"type": "compression", "spec": spec})
    assert response.status == 422, await response.text()
    assert response.content_type == "application/problem+json"
    return (await response.json())["errors"]


@pytest.mark.parametrize(
    ("arrays", "eval_changes", "pointer", "words"),
    [
        ({"input_ids": GOOD["input_ids"]}, {}, "/spec/eval/inputs", "nothing feeds model input 'attention_mask'"),
        (
            {**GOOD, "mask": GOOD["attention_mask"]},
            {"inputs": {"attention_mask": "masks"}},
            "/spec/eval/inputs/attention_mask",
            "the file has no array 'masks'",
        ),
        (
            GOOD,
            {"inputs": {"token_type_ids": "input_ids"}},
            "/spec/eval/inputs/token_type_ids",
            "the model has no input 'token_type_ids'",
        ),
        (
            {**GOOD, "input_ids": GOOD["input_ids"].astype(np.float32)},
            {},
            "/spec/eval/file_id",
            "array 'input_ids' holds float32; model input 'input_ids' takes INT64",
        ),
        (
            {**GOOD, "attention_mask": GOOD["attention_mask"][:, :, None]},
            {},
            "/spec/eval/file_id",
            "array 'attention_mask' has shape [16, 12, 1]; model input 'attention_mask' takes [batch, any]",
        ),
    ],
    ids=["missing input", "unknown array", "unknown input", "wrong dtype", "shape mismatch"],
)
async def test_an_eval_file_that_does_not_feed_the_inputs_is_refused_naming_its_pointer(
    api, tenant, encoder, arrays, eval_changes, pointer, words
):
    file_id = await upload(api, tenant, npz(**arrays), "eval.npz")
    spec = {
        "source": {"model": encoder, "version": 1},
        "passes": [{"kind": "quantize", "mode": "dynamic"}],
        "eval": {"file_id": file_id, **eval_changes},
    }
    errors = await refusal(api, tenant, spec)
    assert [e["pointer"] for e in errors] == [pointer]
    assert words in errors[0]["detail"]
    listed = await (await api.get("/v1/jobs", params={"type": "compression"}, headers=tenant.headers)).json()
    assert listed["data"] == []


async def test_calibration_is_checked_under_its_pass_and_a_good_spec_is_accepted(api, tenant, encoder):
    good = await upload(api, tenant, npz(**GOOD), "eval.npz")
    ids_only = await upload(api, tenant, npz(input_ids=GOOD["input_ids"]), "ids.npz")
    spec = {
        "source": {"model": encoder},
        "passes": [{"kind": "quantize", "mode": "static", "calibration": {"file_id": ids_only, "rows": 8}}],
        "eval": {"file_id": good},
    }
    errors = await refusal(api, tenant, spec)
    assert [e["pointer"] for e in errors] == ["/spec/passes/0/calibration/inputs"]

    renamed = await upload(api, tenant, npz(ids=GOOD["input_ids"], mask=GOOD["attention_mask"]), "cal.npz")
    mapping = {"input_ids": "ids", "attention_mask": "mask"}
    spec["passes"][0]["calibration"] = {"file_id": renamed, "inputs": mapping, "rows": 8}
    created = await create_job(api, tenant, {"type": "compression", "spec": spec})
    assert created.status == 201, await created.text()
    job = await created.json()
    assert job["spec"]["passes"][0]["calibration"]["inputs"] == mapping
    assert (await cancel_job(api, tenant, job["id"])).status == 200  # no worker here will run it
