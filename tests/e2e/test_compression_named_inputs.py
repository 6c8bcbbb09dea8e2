"""Static int8 and fp16 compression jobs on a model with two inputs (a sentence encoder in
miniature: ``input_ids`` and ``attention_mask``), through ``POST /v1/jobs`` on a compression
worker: the calibration file feeds the inputs through a mapping, the eval file by name, and
without labels the report measures the result against the source's outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from tests.support.api import download_artifact, register_version, run_job, upload
from tests.support.compression_models import masked_mean_encoder, token_batch
from tests.support.datasets import npz

pytestmark = pytest.mark.slow

FAST = {"latency_iterations": 5, "throughput_iterations": 2, "warmup": 1}


@pytest.mark.parametrize(("mode", "op"), [("static", "QuantizeLinear"), ("fp16", "Cast")])
async def test_a_two_input_model_is_quantized_by_a_job(api, tenant, compression_worker, tmp_path, mode, op):
    await register_version(api, tenant, "encoder", masked_mean_encoder(tmp_path / "encoder.onnx").read_bytes())
    eval_id = await upload(api, tenant, npz(**token_batch(48, seed=2)), "eval.npz")
    calibration = token_batch(32, seed=3)
    renamed = {"ids": calibration["input_ids"], "mask": calibration["attention_mask"]}
    calibration_id = await upload(api, tenant, npz(**renamed), "calibration.npz")
    quantize: dict = {"kind": "quantize", "mode": mode}
    if mode == "static":
        mapping = {"input_ids": "ids", "attention_mask": "mask"}
        quantize["calibration"] = {"file_id": calibration_id, "inputs": mapping, "rows": 32}
    spec = {
        "source": {"model": "encoder"},
        "passes": [quantize],
        "eval": {"file_id": eval_id},
        "measurement": FAST,
        "register_as": f"encoder-{mode}",
    }
    job = await run_job(api, tenant, {"type": "compression", "spec": spec}, timeout_s=180)
    assert job["status"] == "succeeded", json.dumps(job, indent=1)[-3000:]

    source, quantized = job["result"]["report"]["stages"]
    assert source["accuracy"] is None and quantized["accuracy"] is None
    assert quantized["mean_cosine"] >= 0.99 and quantized["min_cosine"] >= 0.95
    assert quantized["max_abs_error"] > 0 and quantized["onnx_bytes"] < 0.6 * source["onnx_bytes"]
    notes = job["result"]["report"]["meta"]["notes"]
    assert notes == (["pass 0 calibrates on 32 rows of its own data"] if mode == "static" else [])

    (tmp_path / "model.onnx").write_bytes(await download_artifact(api, tenant, job["result"]["artifacts"]["model"]))
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    assert op in {node.op_type for node in graph.node}
    assert [i.name for i in graph.input] == ["input_ids", "attention_mask"]
    assert job["result"]["model_version"]["name"] == f"encoder-{mode}"
    assert np.isfinite(quantized["latency_p50_ms"])
