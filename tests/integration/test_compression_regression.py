"""Compression of a regression model (one float value per row) through the job API: the floor
fields of the other task are refused before a job exists, naming the field, and a job run by a
real compression worker measures every stage by MAE, RMSE and R² against numeric labels, with
the metric named in the report and the job's metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from compression.measure import onnx_outputs
from tests.support.api import create_job, register_version, run_job, upload
from tests.support.compression_models import inputs, mlp
from tests.support.datasets import npz
from tests.support.processes import Worker

QUANTIZE = [{"kind": "quantize", "mode": "dynamic"}]
FAST = {"latency_iterations": 3, "throughput_iterations": 2, "warmup": 1}


@pytest.fixture(scope="module")
def compression_worker(settings, tmp_path_factory):
    worker = Worker(settings, "compression", tmp_path_factory.mktemp("compression") / "worker.log", concurrency=1)
    yield worker
    worker.stop()


@pytest.fixture
async def scorer(api, tenant, tmp_path) -> tuple[str, np.ndarray, np.ndarray]:
    """A registered model with one value per row (``y`` [batch, 1]), eval rows and their labels:
    its own values plus noise, so that its MAE is about 0.08."""
    path = mlp(tmp_path / "scorer.onnx", features=16, hidden=64, outputs=1)
    await register_version(api, tenant, "scorer", path.read_bytes())
    x = inputs((200, 16))
    labels = onnx_outputs(path, x)[:, 0] + np.random.default_rng(5).normal(scale=0.1, size=200)
    return "scorer", x, labels


async def refusal(api, tenant, spec: dict) -> list[dict]:
    response = await create_job(api, tenant, {"type": "compression", "spec": spec})
    assert response.status == 422, await response.text()
    return (await response.json())["errors"]


@pytest.mark.parametrize("field", ["max_drop", "min_accuracy"])
async def test_a_classifiers_floor_for_a_regression_model_is_refused_at_its_field(api, tenant, scorer, field):
    name, x, labels = scorer
    eval_id = await upload(api, tenant, npz(X=x, y=labels), "scores.npz")
    spec = {"source": {"model": name}, "passes": QUANTIZE, "eval": {"file_id": eval_id}}
    errors = await refusal(api, tenant, {**spec, "accuracy_floor": {field: 0.5}})
    assert [e["pointer"] for e in errors] == [f"/spec/accuracy_floor/{field}"]
    assert "regression model" in errors[0]["detail"]


async def test_an_error_ceiling_for_a_classifier_is_refused_at_its_field(api, tenant, tmp_path):
    await register_version(api, tenant, "classes", mlp(tmp_path / "classes.onnx", features=64, outputs=10).read_bytes())
    spec = {
        "source": {"model": "classes"},
        "passes": QUANTIZE,
        "eval": {"builtin": "digits"},
        "accuracy_floor": {"max_mae_increase": 0.2},
    }
    errors = await refusal(api, tenant, spec)
    assert [e["pointer"] for e in errors] == ["/spec/accuracy_floor/max_mae_increase"]


async def test_a_regression_models_compression_reports_its_errors(api, tenant, scorer, compression_worker):
    name, x, labels = scorer
    eval_id = await upload(api, tenant, npz(X=x, y=labels), "scores.npz")
    spec = {
        "source": {"model": name},
        "passes": QUANTIZE,
        "eval": {"file_id": eval_id},
        "accuracy_floor": {"max_mae_increase": 1.0},
        "measurement": FAST,
    }
    job = await run_job(api, tenant, {"type": "compression", "spec": spec}, timeout_s=180)
    assert job["status"] == "succeeded", json.dumps(job, indent=1)[-3000:]
    report, metrics = job["result"]["report"], job["result"]["metrics"]
    assert report["metric"] == "mae"
    source, quantized = report["stages"]
    assert 0.05 < source["mae"] < 0.11 and source["r2"] > 0.9 and source["accuracy"] is None
    assert quantized["mae"] < 2 * source["mae"] and quantized["rmse"] >= quantized["mae"]
    assert 0.99 < quantized["mean_cosine"] <= 1.0
    assert (metrics["mae"], metrics["source_mae"], metrics["r2"]) == (quantized["mae"], source["mae"], quantized["r2"])
    assert metrics["mae_ratio"] == pytest.approx(quantized["mae"] / source["mae"])
