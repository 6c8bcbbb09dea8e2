"""``GET /v1/deployments/stats`` through the SDK (``Client`` and ``AsyncClient``:
``deployments.stats``) and the CLI (``maas deployments stats``), against the real API and
PostgreSQL. Recorded predictions of known latencies and batch sizes are the traffic (no model
server): the typed objects and the table show the numbers numpy computes from them, the window is
passed through, and a window out of range is the API's problem naming ``window_minutes``.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from core.objects import DeploymentStatsList, DeploymentStatsObject
from maas_client import AsyncClient, BadRequest, Client
from tests.support.api import deploy, register_version
from tests.support.onnx_models import LINEAR_MODELS
from tests.support.terminal import cli_env, maas
from tests.support.traffic import BATCHES, LATENCIES_MS, record_traffic


def base_url(api) -> str:
    return str(api.make_url("")).rstrip("/")


@pytest.fixture
async def traffic(api, tenant, db) -> str:
    """A deployed model's name, with eight succeeded requests and one failed in the last 5 minutes,
    and one more (batch 64) ten minutes ago."""
    name = f"stats-{secrets.token_hex(3)}"
    version_id = (await register_version(api, tenant, name, LINEAR_MODELS[0]))["id"]
    await deploy(api, tenant, name, 1)
    record_traffic(db, tenant.id, version_id)
    return name


def row_of(stats: DeploymentStatsList, model: str) -> DeploymentStatsObject:
    (found,) = [row for row in stats.data if row.model == model]
    return found


def assert_the_last_five_minutes(found: DeploymentStatsObject) -> None:
    assert (found.version, found.requests, found.errors) == (1, 9, 1)
    assert found.requests_per_minute == round(9 / 5, 3) and found.error_rate == round(1 / 9, 4)
    assert found.latency_p50_ms == round(float(np.percentile(LATENCIES_MS, 50)), 3)
    assert found.latency_p99_ms == round(float(np.percentile(LATENCIES_MS, 99)), 3)
    assert found.mean_batch_size == round(float(np.mean(BATCHES)), 3) and found.max_batch_size == 8


async def test_the_blocking_client_returns_typed_stats_for_the_window_asked(api, tenant, traffic):
    def work() -> tuple[DeploymentStatsList, DeploymentStatsList]:
        with Client(base_url(api), tenant.key) as client:
            return client.deployments.stats(), client.deployments.stats(window_minutes=15)

    default, longer = await asyncio.to_thread(work)
    assert isinstance(default, DeploymentStatsList) and default.window_minutes == 5
    assert datetime.now(UTC) - timedelta(minutes=6) < default.since < datetime.now(UTC) - timedelta(minutes=4)
    assert_the_last_five_minutes(row_of(default, traffic))
    assert longer.window_minutes == 15
    assert row_of(longer, traffic).requests == 10 and row_of(longer, traffic).max_batch_size == 64


async def test_the_async_client_returns_the_same_and_a_bad_window_names_the_field(api, tenant, traffic):
    async with AsyncClient(base_url(api), tenant.key) as client:
        assert_the_last_five_minutes(row_of(await client.deployments.stats(window_minutes=5), traffic))
        for window, why in ((0, "greater than or equal to 1"), (1441, "less than or equal to 1440")):
            with pytest.raises(BadRequest) as refused:
                await client.deployments.stats(window_minutes=window)
            assert refused.value.pointer == "window_minutes" and why in str(refused.value)

    def blocking_bad_window() -> BadRequest:
        with Client(base_url(api), tenant.key) as client, pytest.raises(BadRequest) as refused:
            client.deployments.stats(window_minutes=0)
        return refused.value

    assert (await asyncio.to_thread(blocking_bad_window)).pointer == "window_minutes"


async def test_the_cli_prints_a_table_or_json_and_exits_non_zero_on_a_bad_window(api, tenant, traffic, tmp_path):
    env = cli_env(tmp_path, base_url(api), tenant.key)
    shown = await maas(env, "deployments", "stats")
    assert shown.returncode == 0, shown.stderr
    assert "last 5 min" in shown.stdout
    lines = shown.stdout.splitlines()
    header = next(cells(line) for line in lines if line.startswith("model "))
    row = next(cells(line) for line in lines if line.startswith(f"{traffic} v1 "))
    assert dict(zip(header, row, strict=True)) == {
        "model": f"{traffic} v1",
        "requests": "9",
        "req/min": "1.8",
        "errors": "1",
        "error rate": "11.11%",
        "p50 ms": "17",
        "p99 ms": "86.62",
        "mean batch": "4.125",
        "max batch": "8",
    }

    as_json = await maas(env, "deployments", "stats", "--window-minutes", "15", "--output", "json")
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    (found,) = [row for row in document["data"] if row["model"] == traffic]
    assert document["window_minutes"] == 15 and found["requests"] == 10

    bad = await maas(env, "deployments", "stats", "--window-minutes", "0")
    assert bad.returncode == 1 and bad.stdout == ""
    assert "400" in bad.stderr and "window_minutes: Input should be greater than or equal to 1" in bad.stderr


def cells(line: str) -> list[str]:
    """A rich table row's cells (the header's are split by ┃, the rows' by │)."""
    return [cell.strip() for cell in line.replace("┃", "│").split("│")]
