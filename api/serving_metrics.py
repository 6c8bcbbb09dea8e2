"""The model servers' metrics, re-exported on the API's ``/metrics``.

Each model server exposes its per-model metrics (queue time, batch sizes, inference time,
rejections; see ``serving.metrics``) on its own loopback port. The API fetches
them when it is scraped and this collector merges them into its registry, each sample
labelled with the ``model_server`` it came from, so one scrape of the API sees every model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

SERVER_LABEL = "model_server"


def merge_expositions(texts: Mapping[str, str]) -> list[Metric]:
    """One metric family per name, holding the samples of every server's text exposition."""
    merged: dict[str, Metric] = {}
    for server_id, text in sorted(texts.items()):
        try:
            families = list(text_string_to_metric_families(text))
        except ValueError:
            continue  # not an exposition; that server's metrics are missing from this scrape
        for family in families:
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            target.samples.extend(
                sample._replace(labels={**sample.labels, SERVER_LABEL: server_id}) for sample in family.samples
            )
    return list(merged.values())


class ServingMetricsCollector(Collector):
    """Holds the last exposition fetched from each live model server."""

    def __init__(self) -> None:
        self._texts: dict[str, str] = {}

    def update(self, texts: Mapping[str, str]) -> None:
        self._texts = dict(texts)

    def collect(self) -> Iterable[Metric]:
        return merge_expositions(self._texts)
