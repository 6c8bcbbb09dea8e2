"""Model servers' metrics: fed by the batcher's hooks, and merged into the API's /metrics per server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from api.serving_metrics import ServingMetricsCollector, merge_expositions
from serving.metrics import ModelLabels, ModelServerMetrics

LABELS = ModelLabels("ten_1", "digits", "3")


def exposition(batches: list[int]) -> str:
    metrics = ModelServerMetrics()
    observer = metrics.observer(LABELS)
    for rows in batches:
        for _ in range(rows):
            observer.item_queued(1)
            observer.item_dequeued(0.001)
        observer.batch_finished(rows, rows, 0.002, failed=False)
    observer.item_rejected("queue_full")
    metrics.watch_queue(LABELS, lambda: 5)
    return metrics.render().decode()


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels} in:\n{text}")


def test_batcher_hooks_fill_the_per_model_series():
    text = exposition([4, 2])
    labels = {"tenant": "ten_1", "model": "digits", "version": "3"}
    assert sample(text, "maas_inference_batch_size_count", **labels) == 2
    assert sample(text, "maas_inference_batch_size_sum", **labels) == 6
    assert sample(text, "maas_inference_requests_total", **labels) == 6
    assert sample(text, "maas_inference_queue_seconds_count", **labels) == 6
    assert sample(text, "maas_inference_rejections_total", reason="queue_full", **labels) == 1
    assert sample(text, "maas_inference_queue_depth", **labels) == 5


def test_forgetting_a_version_removes_its_series():
    metrics = ModelServerMetrics()
    metrics.observer(LABELS).batch_finished(1, 1, 0.001, failed=True)
    metrics.forget(LABELS)
    assert 'model="digits"' not in metrics.render().decode()


def test_the_api_reexports_every_servers_metrics_labelled_by_server():
    registry = CollectorRegistry()
    merged = ServingMetricsCollector()
    registry.register(merged)
    merged.update({"msrv_a": exposition([1]), "msrv_b": exposition([2, 2]), "msrv_bad": "not { an exposition"})
    text = generate_latest(registry).decode()
    assert sample(text, "maas_inference_batch_size_count", model_server="msrv_a") == 1
    assert sample(text, "maas_inference_batch_size_count", model_server="msrv_b") == 2
    assert text.count("# TYPE maas_inference_batch_size histogram") == 1
    assert "msrv_bad" not in text
    assert merge_expositions({}) == []


def test_holdings_show_memory_and_gpu_memory_against_their_budgets():
    metrics = ModelServerMetrics()
    metrics.show_holdings([(LABELS, "ready")], 300, 1000, 200, 800)
    gauges = dict(line.split(" ") for line in metrics.render().decode().splitlines() if line.startswith("maas_model"))
    assert gauges == {
        "maas_model_server_memory_bytes": "300.0",
        "maas_model_server_memory_budget_bytes": "1000.0",
        "maas_model_server_gpu_memory_bytes": "200.0",
        "maas_model_server_gpu_memory_budget_bytes": "800.0",
    }
    assert sample(metrics.render().decode(), "maas_replicas", state="ready", model="digits") == 1
