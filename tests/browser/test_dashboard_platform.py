"""The dashboard over the whole platform, in Debian's Chromium: a training job's curves, a
compression job's report (table and charts) and an artifact downloaded through the page, the new
version's lineage chain from training to compression to deployment, and the deployment's replica
on a model server with its traffic (requests, error rate, p50/p99 latency, batch sizes) after
requests sent while the page is open. Every page screenshotted; none may open a dialog or break its CSP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

from tests.support.api import deploy_ready, download_artifact, infer, job_artifacts, run_job
from tests.support.browser import log_in
from tests.support.processes import Worker
from training.export import INPUT_NAME

pytestmark = pytest.mark.slow
REQUESTS = 12

TRAINING = {
    "model": {"arch": "mlp", "hidden": [32]},
    "dataset": {"builtin": "digits"},
    "validation": {"fraction": 0.2},
    "strategy": {"kind": "ddp", "nproc_per_node": 1},
    "hyperparameters": {"epochs": 4, "batch_size": 32, "lr": 0.003, "seed": 0},
    "register_as": "digits-mlp",
}
COMPRESSION = {
    "source": {"model": "digits-mlp", "version": 1},
    "passes": [
        {"kind": "prune", "amount": 0.5, "scope": "global", "fine_tune_epochs": 1},
        {"kind": "quantize", "mode": "static", "calibration": {"rows": 128}},
    ],
    "eval": {"builtin": "digits"},
    "measurement": {"latency_iterations": 20, "throughput_iterations": 5, "warmup": 2},
    "register_as": "digits-mlp-small",
}


@pytest.fixture(scope="module")
def workers(settings, tmp_path_factory):
    started = [
        Worker(settings, queue, tmp_path_factory.mktemp(queue) / "worker.log", concurrency=1)
        for queue in ("training", "compression")
    ]
    yield started
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def pipeline(live, db, workers, model_server):
    """A tenant whose model was trained, compressed into a second model and deployed."""
    from tests.conftest import new_tenant

    tenant = new_tenant(db)
    trained = live.run(lambda api: run_job(api, tenant, {"type": "training", "spec": TRAINING}, timeout_s=300), 360)
    assert trained["status"] == "succeeded", json.dumps(trained)[-2000:]
    compressed = live.run(
        lambda api: run_job(api, tenant, {"type": "compression", "spec": COMPRESSION}, timeout_s=300), 360
    )
    assert compressed["status"] == "succeeded", json.dumps(compressed)[-2000:]
    live.run(lambda api: deploy_ready(api, tenant, "digits-mlp-small", 1), 180)
    return tenant, trained, compressed


def test_a_training_jobs_curves(live, watched, pipeline):
    tenant, trained, _ = pipeline
    log_in(watched, live, tenant.key, f"#/jobs/{trained['id']}")
    page = watched.page
    page.wait_for_selector(".facts .status-succeeded")
    loss = page.locator("[data-testid=loss-chart]")
    page.wait_for_selector("[data-testid=loss-chart] polyline[data-series=loss]")
    page.wait_for_selector("[data-testid=accuracy-chart] polyline[data-series=val_accuracy]")
    assert int(loss.get_attribute("data-points") or 0) >= trained["progress"]["step"] // 10
    watched.screenshot("job-training")


def test_a_compression_report_and_an_artifact_download(live, watched, pipeline):
    tenant, _, compressed = pipeline
    log_in(watched, live, tenant.key, f"#/jobs/{compressed['id']}")
    page = watched.page
    rows = page.locator("[data-testid=report-table] tbody tr")
    rows.first.wait_for()
    assert [rows.nth(i).locator("td").first.text_content() for i in range(rows.count())] == [
        "source",
        "1. prune",
        "2. quantize",
    ]
    assert page.locator("[data-testid=report-charts] svg").count() == 3
    assert page.locator("[data-testid=report-charts] rect.bar").count() == 9
    watched.screenshot("job-compression")

    report = next(
        a for a in live.run(lambda api: job_artifacts(api, tenant, compressed["id"])) if a["name"] == "report.json"
    )
    with page.expect_download() as download:
        page.click(f"button[data-artifact='{report['id']}']")
    path = download.value.path()
    assert download.value.suggested_filename == "report.json"
    expected = live.run(lambda api: download_artifact(api, tenant, report["id"]))
    assert Path(path).read_bytes() == expected
    assert json.loads(expected)["stages"][0]["stage"] == "source"


def test_lineage_from_training_to_deployment(live, watched, pipeline):
    tenant, _, _ = pipeline
    log_in(watched, live, tenant.key, "#/models")
    page = watched.page
    page.wait_for_selector("[data-testid=models-table] a:text-is('digits-mlp-small')")
    watched.screenshot("models")
    page.click("a:text-is('digits-mlp-small')")
    chain = page.wait_for_selector("[data-testid=version-1] [data-testid=lineage]")
    assert chain.text_content() == ("training job→digits-mlp v1→compression job→digits-mlp-small v1→deployed (ready)")
    assert page.locator("[data-testid=version-1] table.signature tbody tr").count() == 2
    watched.screenshot("model")


def test_a_deployments_replicas_and_traffic(live, watched, pipeline):
    tenant, _, _ = pipeline
    log_in(watched, live, tenant.key, "#/deployments")
    page = watched.page
    row = page.wait_for_selector("[data-testid=deployments-table] tbody tr")
    assert row.query_selector("td").text_content() == "digits-mlp-small"
    replica = page.wait_for_selector("[data-testid=deployments-table] li[data-replica=ready]")
    assert "v1" in replica.text_content()

    # requests sent while the page is open show up in its traffic table at its next refresh
    x = load_digits().data[:4].astype(np.float32) / 16.0
    body = {"inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}]}

    async def send(api) -> list[int]:
        answers = await asyncio.gather(*(infer(api, tenant, "digits-mlp-small", body) for _ in range(REQUESTS)))
        return [a.status for a in answers]

    assert live.run(send) == [200] * REQUESTS
    stat = "[data-testid=deployment-stats] tbody tr [data-stat={}]".format
    page.wait_for_function(
        "([selector, n]) => document.querySelector(selector)?.textContent === String(n)",
        arg=[stat("requests"), REQUESTS],
        timeout=30_000,
    )
    assert float(page.text_content(stat("requests_per_minute"))) == pytest.approx(REQUESTS / 5, abs=0.01)
    assert page.text_content(stat("error_rate")) == "0.0%"
    p50, p99 = (float(page.text_content(stat(f"latency_{p}_ms")).removesuffix(" ms")) for p in ("p50", "p99"))
    assert 0 < p50 <= p99
    mean_batch = float(page.text_content(stat("mean_batch_size")))
    max_batch = int(page.text_content(stat("max_batch_size")))
    assert 4 <= mean_batch <= max_batch <= 4 * REQUESTS  # rows per model call: 4 a request
    watched.screenshot("deployments")
