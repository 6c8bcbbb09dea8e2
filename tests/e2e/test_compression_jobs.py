"""Compression jobs end to end: the API, PostgreSQL, the broker, S3 and a Celery worker on the
compression queue. A model trained by a training job is pruned and quantized into a new version
whose lineage names its parent; an uploaded state dict is shrunk, registered with its weights and
compressed again; bad specs are 422s before anything is created; a pass that destroys the model
fails the job with the numbers and registers nothing; a cancel stops a running distillation."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save
from sklearn.datasets import load_digits

from compression.finetune import finetune
from tests.support.api import create_job, download_artifact, job_artifacts, job_events, run_job, upload, wait_done
from tests.support.datasets import npz
from tests.support.eventually import eventually_async
from tests.support.onnx_models import tiny_onnx
from training.spec import MLPSpec
from training.zoo import build_model

pytestmark = pytest.mark.slow

MLP = {"arch": "mlp", "hidden": [32]}
FAST = {"latency_iterations": 20, "throughput_iterations": 5, "warmup": 2}


@pytest.fixture(scope="module")
def state_dict() -> bytes:
    """A digits MLP (hidden [32]) trained in this process, as safetensors bytes."""
    digits = load_digits()
    x, y = torch.from_numpy((digits.data / 16.0).astype(np.float32)), torch.from_numpy(digits.target)
    torch.manual_seed(0)
    model = build_model(MLPSpec.model_validate(MLP), 64, 10)
    finetune(model, x, y, epochs=10, lr=3e-3)
    return save({name: t.contiguous() for name, t in model.state_dict().items()})


async def succeeded(api, tenant, body: dict, timeout_s: float = 300) -> dict:
    job = await run_job(api, tenant, body, timeout_s=timeout_s)
    assert job["status"] == "succeeded", json.dumps(job, indent=1)[-3000:]
    return job


async def version(api, tenant, name: str, number: int) -> dict:
    response = await api.get(f"/v1/models/{name}/versions/{number}", headers=tenant.headers)
    assert response.status == 200, await response.text()
    return await response.json()


async def test_a_trained_model_pruned_and_quantized_becomes_a_new_version(
    api, tenant, training_worker, compression_worker, tmp_path
):
    training = {
        "model": MLP,
        "dataset": {"builtin": "digits"},
        "validation": {"fraction": 0.2},
        "strategy": {"kind": "ddp", "nproc_per_node": 1},
        "hyperparameters": {"epochs": 8, "batch_size": 32, "lr": 0.003, "seed": 0},
        "register_as": "digits-mlp",
    }
    trained = await succeeded(api, tenant, {"type": "training", "spec": training})
    spec = {
        "source": {"model": "digits-mlp", "version": 1},
        "passes": [
            {"kind": "prune", "amount": 0.5, "scope": "global", "fine_tune_epochs": 2},
            {"kind": "quantize", "mode": "static", "calibration": {"rows": 128}},
        ],
        "eval": {"builtin": "digits"},
        "measurement": FAST,
        "register_as": "digits-mlp-small",
    }
    job = await succeeded(api, tenant, {"type": "compression", "spec": spec})

    stages = job["result"]["report"]["stages"]
    assert [s["stage"] for s in stages] == ["source", "1. prune", "2. quantize"]
    fields = {
        "parameters",
        "nonzero_parameters",
        "onnx_bytes",
        "onnx_gzip_bytes",
        "accuracy",
        "mean_cosine",
        "max_abs_error",
        "latency_p50_ms",
        "throughput_items_per_s",
        "vs_source",
    }
    assert all(fields <= set(s) for s in stages)
    source, pruned, quantized = stages
    # the eval rows are the training job's own validation rows: the source scores what training reported
    assert source["accuracy"] == pytest.approx(trained["result"]["metrics"]["val_accuracy"])
    assert pruned["nonzero_parameters"] <= 0.51 * pruned["parameters"]
    assert pruned["onnx_gzip_bytes"] < source["onnx_gzip_bytes"]
    assert quantized["parameters"] == source["parameters"] and quantized["onnx_bytes"] < 0.6 * source["onnx_bytes"]
    assert quantized["accuracy"] >= source["accuracy"] - 0.05
    assert all(s["latency_p50_ms"] > 0 and s["throughput_items_per_s"] > 0 for s in stages)
    assert job["metrics"]["accuracy"] == quantized["accuracy"]
    assert job["result"]["report"]["overall"]["onnx_bytes_ratio"] < 0.6

    history = await job_events(api, tenant, job["id"])
    progress = [e["data"] for e in history if e["type"] == "progress"]
    assert [p["stage"] for p in progress if p.get("status") == "measured"] == ["1. prune", "2. quantize"]
    assert [p["epoch"] for p in progress if "epoch" in p] == [1, 2]
    assert any("held out (fraction 0.2, seed 0)" in e["message"] for e in history if e["type"] == "log")

    listed = await job_artifacts(api, tenant, job["id"])
    # the run after each pass was a checkpoint, deleted once the job finished
    checkpoints = [a for a in listed if a["kind"] == "checkpoint"]
    assert [a["name"] for a in checkpoints] == ["after-pass-1.tar", "after-pass-2.tar"]
    assert all(a["deleted_at"] for a in checkpoints), checkpoints
    artifacts = {(a["kind"], a["name"]): a for a in listed if a["kind"] != "checkpoint"}
    assert set(artifacts) == {
        ("model", "model.onnx"),
        ("report", "report.json"),
        ("report", "report.md"),
        ("plot", "report.png"),
    }
    report = json.loads(await download_artifact(api, tenant, artifacts[("report", "report.json")]["id"]))
    assert report["stages"][1]["details"]["sparsity"] >= 0.49
    assert (await download_artifact(api, tenant, artifacts[("report", "report.md")]["id"])).startswith(
        b"# Compression report"
    )
    assert (await download_artifact(api, tenant, artifacts[("plot", "report.png")]["id"]))[:4] == b"\x89PNG"
    (tmp_path / "model.onnx").write_bytes(await download_artifact(api, tenant, job["result"]["artifacts"]["model"]))
    graph = onnx.load(str(tmp_path / "model.onnx"))
    assert "QuantizeLinear" in {node.op_type for node in graph.graph.node}
    digits = load_digits()
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: (digits.data / 16.0).astype(np.float32)})[0]
    assert (logits.argmax(1) == digits.target).mean() >= 0.9

    parent = await version(api, tenant, "digits-mlp", 1)
    made = await version(api, tenant, "digits-mlp-small", 1)
    assert made["lineage"]["parent"] == {"model": "digits-mlp", "version": 1, "model_version_id": parent["id"]}
    assert [p["kind"] for p in made["lineage"]["passes"]] == ["prune", "quantize"]
    assert made["lineage"]["source_job_id"] == job["id"] == made["source_job_id"]
    assert "model" not in made["lineage"]  # a quantized graph has no zoo weights left
    assert made["signature"] == parent["signature"]
    assert made["artifact"]["id"] == job["result"]["artifacts"]["model"]


async def test_an_uploaded_state_dict_is_shrunk_and_can_be_compressed_again(
    api, tenant, compression_worker, state_dict
):
    file_id = await upload(api, tenant, state_dict, "mlp.safetensors", "model")
    spec = {
        "source": {"file_id": file_id, "arch": MLP},
        "passes": [{"kind": "prune", "amount": 0.5, "structured": True, "fine_tune_epochs": 1}],
        "dataset": {"builtin": "digits"},
        "eval": {"builtin": "digits"},
        "measurement": {"speed": False},
        "register_as": "digits-mlp-narrow",
    }
    job = await succeeded(api, tenant, {"type": "compression", "spec": spec})
    source, narrow = job["result"]["report"]["stages"]
    assert narrow["parameters"] == 64 * 16 + 16 + 16 * 10 + 10 < source["parameters"]
    assert narrow["latency_p50_ms"] is None
    kinds = {a["kind"] for a in await job_artifacts(api, tenant, job["id"])}
    assert "weights" in kinds
    made = await version(api, tenant, "digits-mlp-narrow", 1)
    assert made["lineage"]["parent"] == {"file_id": file_id}
    assert made["lineage"]["model"]["hidden"] == [16]
    assert made["lineage"]["training_data"] == {"dataset": {"builtin": "digits"}, "split": [0.2, 0]}

    # the new version is a zoo model again: its arch comes from the lineage, its weights from the job
    too_big = {"kind": "distill", "student": {"arch": "mlp", "hidden": [24]}}
    again = {
        "source": {"model": "digits-mlp-narrow"},
        "eval": {"builtin": "digits"},
        "measurement": {"speed": False},
        "accuracy_floor": {"max_drop": None},
    }
    refused = await create_job(api, tenant, {"type": "compression", "spec": {**again, "passes": [too_big]}})
    assert refused.status == 422
    assert [e["pointer"] for e in (await refused.json())["errors"]] == ["/spec/passes/0/student"]
    student = {"kind": "distill", "student": {"arch": "mlp", "hidden": [8]}, "epochs": 4, "lr": 0.01}
    second = await succeeded(api, tenant, {"type": "compression", "spec": {**again, "passes": [student]}})
    assert second["result"]["report"]["stages"][1]["parameters"] == 64 * 8 + 8 + 8 * 10 + 10


async def test_bad_compression_specs_are_422_before_anything_is_created(api, tenant, state_dict):
    onnx_id = await upload(api, tenant, tiny_onnx(), "tiny.onnx", "model")
    registered = await api.post("/v1/models/tiny/versions", json={"file_id": onnx_id}, headers=tenant.headers)
    assert registered.status == 201
    weights_id = await upload(api, tenant, state_dict, "mlp.safetensors", "model")
    narrow = await upload(api, tenant, npz(X=np.zeros((8, 10), np.float32)), "narrow.npz", "dataset")
    with_arch = {"file_id": weights_id, "arch": MLP}
    base = {"eval": {"builtin": "digits"}, "dataset": {"builtin": "digits"}}
    quantize = {"kind": "quantize", "mode": "dynamic"}
    cases = [
        ({"source": with_arch, "passes": [{"kind": "prune", "amount": 1.5}]}, "/spec/passes/0/amount"),
        ({"source": with_arch, "passes": [{"kind": "prune", "amount": 0}]}, "/spec/passes/0/amount"),
        (
            {"source": {"file_id": onnx_id}, "passes": [{"kind": "prune", "amount": 0.5}], "eval": {"file_id": narrow}},
            "/spec/passes/0/kind",
        ),
        (
            {"source": {"model": "tiny", "version": 1}, "passes": [quantize, {"kind": "prune", "amount": 0.5}]},
            "/spec/passes/1/kind",
        ),
        (
            {
                "source": {"model": "tiny"},
                "passes": [{"kind": "distill", "student": {"arch": "mlp"}}],
                "eval": {"file_id": narrow},
            },
            "/spec/passes/0/kind",
        ),
        (
            {"source": with_arch, "passes": [{"kind": "distill", "student": {"arch": "mlp", "hidden": [64]}}]},
            "/spec/passes/0/student",
        ),
        (
            {
                "source": with_arch,
                "passes": [{"kind": "quantize", "mode": "static", "calibration": {"file_id": narrow}}],
            },
            "/spec/passes/0/calibration/file_id",
        ),
        ({"source": {"file_id": weights_id}, "passes": [quantize]}, "/spec/source/arch"),
        (
            {"source": {"file_id": weights_id, "arch": {"arch": "mlp", "hidden": [31]}}, "passes": [quantize]},
            "/spec/source/arch",
        ),
        ({"source": {"model": "nope"}, "passes": [quantize]}, "/spec/source/model"),
        ({"source": {"model": "tiny", "version": 7}, "passes": [quantize]}, "/spec/source/version"),
        ({"source": {"model": "tiny"}, "passes": [quantize]}, "/spec/eval/builtin"),  # 4 inputs, not 64
    ]
    for spec, pointer in cases:
        response = await create_job(api, tenant, {"type": "compression", "spec": {**base, **spec}})
        assert response.status == 422, (pointer, await response.text())
        assert pointer in [e["pointer"] for e in (await response.json())["errors"]], (pointer, await response.text())
    listed = await (await api.get("/v1/jobs", params={"type": "compression"}, headers=tenant.headers)).json()
    assert listed["data"] == []


async def test_a_pass_below_the_accuracy_floor_fails_the_job_with_the_numbers(
    api, tenant, compression_worker, state_dict
):
    file_id = await upload(api, tenant, state_dict, "mlp.safetensors", "model")
    spec = {
        "source": {"file_id": file_id, "arch": MLP},
        "passes": [{"kind": "prune", "amount": 0.98, "fine_tune_epochs": 0}, {"kind": "quantize", "mode": "dynamic"}],
        "eval": {"builtin": "digits"},
        "accuracy_floor": {"max_drop": 0.05},
        "register_as": "digits-mlp-broken",
    }
    job = await (await create_job(api, tenant, {"type": "compression", "spec": spec})).json()
    done = await wait_done(api, tenant, job["id"], timeout_s=300)
    assert done["status"] == "failed", done
    error = done["error"]
    assert error["code"] == "accuracy_floor" and error["metric"] == "accuracy"
    assert error["stage"] == "1. prune" and error["pass_index"] == 0
    assert error["value"] < error["floor"] == pytest.approx(error["source_value"] - 0.05)
    assert [s["stage"] for s in error["stages"]] == ["source", "1. prune"]
    assert "below the floor" in error["message"]
    missing = await api.get("/v1/models/digits-mlp-broken/versions", headers=tenant.headers)
    assert missing.status == 404
    assert not [a for a in await job_artifacts(api, tenant, job["id"]) if a["kind"] == "model"]


async def test_cancel_stops_a_running_distillation(api, tenant, compression_worker, state_dict):
    file_id = await upload(api, tenant, state_dict, "mlp.safetensors", "model")
    spec = {
        "source": {"file_id": file_id, "arch": MLP},
        "passes": [{"kind": "distill", "student": {"arch": "mlp", "hidden": [8]}, "epochs": 1000}],
        "dataset": {"builtin": "digits"},
        "eval": {"builtin": "digits"},
    }
    job = await (await create_job(api, tenant, {"type": "compression", "spec": spec})).json()

    async def an_epoch() -> bool:
        return any("epoch" in e["data"] for e in await job_events(api, tenant, job["id"]) if e["type"] == "progress")

    await eventually_async(an_epoch, 120, "the distillation to report an epoch")
    await api.post(f"/v1/jobs/{job['id']}/cancel", headers=tenant.headers)
    done = await wait_done(api, tenant, job["id"], timeout_s=30)
    assert done["status"] == "canceled"
