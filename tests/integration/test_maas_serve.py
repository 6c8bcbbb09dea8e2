"""``maas serve``: a model server in a process of its own, with no Celery worker at all.

The console script's help describes the command. A ``maas serve`` process (``python -m cli.main
serve``, what the console script runs) registers in ``model_servers``, loads a model deployed
through the API, and the API's ``POST /v2/models/{name}/infer`` answers with what ONNX Runtime
computes, from batches that server ran; on SIGTERM it drains, deregisters and exits 0.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from api.inference_router import ROUTER
from core.models import ModelServerRecord, Prediction
from tests.support.api import deploy, infer, json_request, register_version, wait_ready
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS, linear_expected
from tests.support.processes import REPO, ModelServerProcess, inherited_env

MAAS = Path(sys.executable).with_name("maas")  # the console script installed next to this interpreter
REQUESTS = 4


def test_maas_serve_help_describes_the_command():
    shown = subprocess.run(
        [str(MAAS), "serve", "--help"], cwd=REPO, env=inherited_env(), capture_output=True, text=True, timeout=60
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.startswith("usage: maas serve")
    assert "model server" in shown.stdout and "--host" in shown.stdout and "--port" in shown.stdout


@pytest.fixture
def maas_serve(settings, db, tmp_path) -> Iterator[ModelServerProcess]:
    args = ("-m", "cli.main", "serve", "--host", "127.0.0.1", "--port", "0")
    server = ModelServerProcess(settings, tmp_path / "maas-serve.log", args)
    yield server
    assert server.stop() == 0, server.log_path.read_text()[-3000:]
    with db() as session:  # it said goodbye: nothing routes to it any more
        assert session.get(ModelServerRecord, server.id) is None


async def test_a_model_deployed_through_the_api_is_served_by_maas_serve(api, tenant, db, maas_serve):
    assert maas_serve.url.startswith("http://127.0.0.1:")
    name = f"lin-{secrets.token_hex(3)}"
    await register_version(api, tenant, name, LINEAR_MODELS[0])
    # two replicas: one on the session's model server, one on maas serve (the placer spreads them)
    await deploy(api, tenant, name, 1, min_replicas=2, max_replicas=2)

    async def ready_on_maas_serve() -> bool:
        shown = await (await api.get(f"/v1/models/{name}/deployment", headers=tenant.headers)).json()
        return any(r["model_server"] == maas_serve.id and r["status"] == "ready" for r in shown["replicas"])

    await eventually_async(ready_on_maas_serve, 90, f"{name} to be ready on {maas_serve.id}")
    await wait_ready(api, tenant, name, 1)

    def routed_to_maas_serve() -> bool:  # the API re-reads its routing table every routing_refresh_s
        route = api.app[ROUTER].table.models.get((tenant.id, name))
        return route is not None and any(r.server_id == maas_serve.id for r in route.versions[1].replicas)

    # with another model server up (the session's), the API may otherwise route every request there
    await eventually_async(routed_to_maas_serve, 30, f"the API to route {name} to {maas_serve.id}")

    x = np.random.default_rng(5).normal(size=(3, 4)).astype(np.float32)
    want = linear_expected(x)
    for _ in range(REQUESTS):
        answer = await infer(api, tenant, name, json_request(x))
        assert answer.status == 200, await answer.text()
        outputs = {o["name"]: o for o in (await answer.json())["outputs"]}
        np.testing.assert_allclose(np.array(outputs["scores"]["data"]).reshape(3, 3), want["scores"], rtol=1e-6)
        assert outputs["label"]["data"] == want["label"].tolist()

    def predictions() -> list[Prediction]:
        with db() as session:
            return list(session.scalars(select(Prediction).where(Prediction.tenant_id == tenant.id)))

    async def recorded() -> list[Prediction]:  # the API writes them in bulk, on this event loop: do not block it
        rows = await asyncio.to_thread(predictions)
        return rows if len(rows) >= REQUESTS else []

    records = await eventually_async(recorded, 30, f"{REQUESTS} recorded predictions")
    assert {r.status for r in records} == {"succeeded"}
    # the API spreads requests over every live server holding the model: some ran on maas serve
    assert any(r.batch_id.startswith(f"{maas_serve.id}-") for r in records), [r.batch_id for r in records]
