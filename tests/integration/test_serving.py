"""Serving through real HTTP: the API, a real model server (``python -m serving``), PostgreSQL and S3.

Models are registered from uploaded ONNX files, deployed with ``PUT /v1/models/{name}/deployment``
and called with the Open Inference Protocol v2, by hand and with a stock tritonclient. Answers
are compared with ONNX Runtime called directly; batching is checked from the recorded
predictions (which requests shared an ONNX Runtime call), never from wall-clock times.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select

from core.artifact_store import ArtifactStore
from core.models import Artifact, Model, ModelReplica, ModelVersion, Prediction
from tests.support.api import deploy, deployed_model, infer, json_request, register_version, wait_ready
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS, embedding_lookup, linear_classifier, linear_expected

HEADER = "Inference-Header-Content-Length"
WAIT_S = 90.0
RNG = np.random.default_rng(0)  # the inputs sent to the models

pytestmark = pytest.mark.usefixtures("model_server")


def binary_body(x: np.ndarray, outputs: list[dict[str, Any]]) -> tuple[bytes, int]:
    raw = x.astype("<f4").tobytes()
    header = json.dumps(
        {
            "inputs": [
                {"name": "x", "datatype": "FP32", "shape": list(x.shape), "parameters": {"binary_data_size": len(raw)}}
            ],
            "outputs": outputs,
        }
    ).encode()
    return header + raw, len(header)


def split_binary_response(body: bytes, header_length: int) -> dict[str, np.ndarray]:
    header = json.loads(body[:header_length])
    arrays, offset = {}, header_length
    for output in header["outputs"]:
        dtype = {"FP32": "<f4", "INT64": "<i8"}[output["datatype"]]
        if "data" in output:
            arrays[output["name"]] = np.array(output["data"], dtype=dtype).reshape(output["shape"])
            continue
        size = output["parameters"]["binary_data_size"]
        arrays[output["name"]] = np.frombuffer(body[offset : offset + size], dtype=dtype).reshape(output["shape"])
        offset += size
    return arrays


def predictions(db, tenant_id: str) -> list[Prediction]:
    with db() as session:
        return list(session.scalars(select(Prediction).where(Prediction.tenant_id == tenant_id)))


async def recorded(db, tenant_id: str, count: int) -> list[Prediction]:
    async def enough() -> list[Prediction]:  # the API writes them in bulk, on this event loop: do not block it
        rows = await asyncio.to_thread(predictions, db, tenant_id)
        return rows if len(rows) >= count else []

    return await eventually_async(enough, WAIT_S, f"{count} recorded predictions")


# ---------------------------------------------------------------- deployments


async def test_a_deployment_becomes_ready_and_shows_its_replica(api, tenant):
    name = f"lin-{secrets.token_hex(3)}"
    await register_version(api, tenant, name, LINEAR_MODELS[0])
    first = await deploy(api, tenant, name, 1)
    assert first["status"] in ("pending", "ready")
    assert (first["version"], first["max_batch_size"], first["max_queue_delay_us"]) == (1, 32, 500)
    assert (first["max_queue_size"], first["timeout_ms"]) == (1024, 10_000)
    await wait_ready(api, tenant, name, 1)
    shown = await (await api.get(f"/v1/models/{name}/deployment", headers=tenant.headers)).json()
    assert shown["status"] == "ready"
    assert [(r["version"], r["status"]) for r in shown["replicas"]] == [(1, "ready")]
    assert shown["replicas"][0]["model_server"].startswith("msrv_")


async def test_bad_deployments_are_refused(api, tenant):
    name = f"lin-{secrets.token_hex(3)}"
    await register_version(api, tenant, name, LINEAR_MODELS[0])
    unknown_model = await api.put("/v1/models/nope/deployment", json={"version": 1}, headers=tenant.headers)
    assert unknown_model.status == 404
    unknown_version = await api.put(f"/v1/models/{name}/deployment", json={"version": 7}, headers=tenant.headers)
    assert unknown_version.status == 404 and "version 7" in (await unknown_version.json())["detail"]
    for field, value in (("max_batch_size", 0), ("max_queue_delay_us", -1), ("timeout_ms", -5), ("color", 1)):
        bad = await api.put(f"/v1/models/{name}/deployment", json={"version": 1, field: value}, headers=tenant.headers)
        assert bad.status == 422, field
        assert (await bad.json())["errors"][0]["pointer"] == f"/{field}"
    assert (await api.get(f"/v1/models/{name}/deployment", headers=tenant.headers)).status == 404

    fixed = f"fixed-{secrets.token_hex(3)}"
    # the weights do not matter: only its batch dimension, fixed at 1, is checked
    await register_version(api, tenant, fixed, linear_classifier(np.eye(4, 3), np.zeros(3), batch=1))
    batched = await api.put(
        f"/v1/models/{fixed}/deployment", json={"version": 1, "max_batch_size": 8}, headers=tenant.headers
    )
    assert batched.status == 422
    problem = await batched.json()
    assert problem["errors"][0]["pointer"] == "/max_batch_size" and "input 'x'" in problem["detail"]
    one = await api.put(
        f"/v1/models/{fixed}/deployment", json={"version": 1, "max_batch_size": 1}, headers=tenant.headers
    )
    assert one.status == 200


async def test_a_model_whose_artifact_changed_fails_its_load_with_the_reason(api, tenant, settings, db):
    name = f"lin-{secrets.token_hex(3)}"
    # bytes of its own: a model server's local cache (keyed by sha256) cannot already hold them
    rng = np.random.default_rng()
    own = linear_classifier(rng.normal(size=(4, 3)), rng.normal(size=3))
    version = await register_version(api, tenant, name, own)
    with db() as session:
        key = session.scalar(select(Artifact.storage_key).where(Artifact.id == version["artifact"]["id"]))
    # other bytes behind the registered version: its recorded sha256 no longer matches
    await asyncio.to_thread(ArtifactStore(settings).upload_chunks, key, [LINEAR_MODELS[1]])
    await deploy(api, tenant, name, 1)

    async def failed() -> dict | None:
        shown = await (await api.get(f"/v1/models/{name}/deployment", headers=tenant.headers)).json()
        return shown if shown["status"] == "failed" else None

    shown = await eventually_async(failed, WAIT_S, "the load to fail")
    assert "sha256" in shown["replicas"][0]["error"]
    answer = await infer(api, tenant, name, json_request(np.zeros((1, 4), np.float32)))
    assert answer.status == 503 and answer.headers["Retry-After"] == "1"


# ---------------------------------------------------------------- inference


async def test_json_and_binary_requests_give_onnxruntime_outputs(api, tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    x = RNG.normal(size=(5, 4)).astype(np.float32)
    want = linear_expected(x)

    answer = await infer(api, tenant, name, json_request(x, id="req-1"))
    assert answer.status == 200, await answer.text()
    assert HEADER not in answer.headers
    body = await answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (name, "1", "req-1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["scores"]["shape"] == [5, 3] and outputs["scores"]["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(outputs["scores"]["data"]).reshape(5, 3), want["scores"], rtol=1e-6)
    assert outputs["label"]["datatype"] == "INT64" and outputs["label"]["data"] == want["label"].tolist()

    payload, header_length = binary_body(
        x, [{"name": "scores", "parameters": {"binary_data": True}}, {"name": "label"}]
    )
    answer = await api.post(
        f"/v2/models/{name}/versions/1/infer",
        data=payload,
        headers={**tenant.headers, HEADER: str(header_length), "Content-Type": "application/octet-stream"},
    )
    assert answer.status == 200, await answer.text()
    arrays = split_binary_response(await answer.read(), int(answer.headers[HEADER]))
    np.testing.assert_array_equal(arrays["scores"], want["scores"])
    np.testing.assert_array_equal(arrays["label"], want["label"])

    only_label = await infer(api, tenant, name, json_request(x, outputs=[{"name": "label"}]))
    assert [o["name"] for o in (await only_label.json())["outputs"]] == ["label"]


async def test_tritonclient_works_unchanged(api, tenant):
    import tritonclient.http as triton

    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    x = RNG.normal(size=(3, 4)).astype(np.float32)
    want = linear_expected(x)
    url = str(api.make_url("")).removeprefix("http://").rstrip("/")

    def session() -> dict[str, Any]:
        client = triton.InferenceServerClient(url=url)
        headers = tenant.headers
        try:
            found: dict[str, Any] = {
                "live": client.is_server_live(headers=headers),
                "ready": client.is_server_ready(headers=headers),
                "server": client.get_server_metadata(headers=headers),
                "model": client.get_model_metadata(name, headers=headers),
                "model_ready": client.is_model_ready(name, "1", headers=headers),
                "unauthenticated_ready": client.is_server_ready(),
            }
            for binary in (False, True):
                given = triton.InferInput("x", list(x.shape), "FP32")
                given.set_data_from_numpy(x, binary_data=binary)
                asked = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("scores", "label")]
                result = client.infer(name, [given], outputs=asked, headers=headers)
                found[f"binary={binary}"] = (result.as_numpy("scores"), result.as_numpy("label"))
            zipped = client.infer(
                name,
                [given],
                headers=headers,
                request_compression_algorithm="gzip",
                response_compression_algorithm="deflate",
            )
            found["gzip"] = (zipped.as_numpy("scores"), zipped.as_numpy("label"))
            try:
                client.infer("no-such-model", [given], headers=headers)
            except triton.InferenceServerException as exc:
                found["error"] = (exc.status(), exc.message())
            return found
        finally:
            client.close()

    found = await asyncio.to_thread(session)
    assert found["live"] and found["ready"] and found["model_ready"]
    assert not found["unauthenticated_ready"]
    assert "binary_tensor_data" in found["server"]["extensions"]
    model = found["model"]
    assert (model["name"], model["versions"], model["platform"]) == (name, ["1"], "onnxruntime_onnx")
    assert model["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert model["outputs"][1] == {"name": "label", "datatype": "INT64", "shape": [-1]}
    for key in ("binary=False", "binary=True", "gzip"):
        scores, label = found[key]
        np.testing.assert_allclose(scores, want["scores"], rtol=1e-6)
        np.testing.assert_array_equal(label, want["label"])
    assert found["error"][0] == "404" and "no-such-model" in found["error"][1]


BAD_INPUTS = [
    ({"inputs": [{"name": "z", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}]}, "'z'"),
    ({"inputs": []}, "missing input 'x'"),
    (
        {"inputs": [{"name": "x", "datatype": "INT64", "shape": [1, 4], "data": [0] * 4}]},
        "input 'x' has datatype INT64",
    ),
    (
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [4], "data": [0] * 4}]},
        "input 'x' has shape [4] (rank 1)",
    ),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 5], "data": [0] * 5}]}, "dimension 1 must be 4"),
    (
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 3}]},
        "input 'x' has 3 data elements",
    ),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [3_000_000, 4], "data": []}]}, "input 'x' has shape"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [40, 4], "data": [0] * 160}]}, "input 'x' has 40 rows"),
    ({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ["a"] * 4}]}, "input 'x' is FP32"),
    (
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0] * 4}], "outputs": [{"name": "q"}]},
        "'q'",
    ),
]


async def test_every_bad_input_is_400_naming_the_input(api, tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    for body, words in BAD_INPUTS:
        answer = await infer(api, tenant, name, body)
        assert answer.status == 400, (body, await answer.text())
        assert answer.content_type == "application/json"
        assert words in (await answer.json())["error"], body

    malformed = await api.post(f"/v2/models/{name}/infer", data=b"{not json", headers=tenant.headers)
    assert malformed.status == 400 and "cannot be parsed" in (await malformed.json())["error"]
    raw = np.zeros((1, 4), np.float32).tobytes()
    short, length = binary_body(np.zeros((1, 4), np.float32), [])
    truncated = await api.post(
        f"/v2/models/{name}/infer", data=short[: length + len(raw) - 4], headers={**tenant.headers, HEADER: str(length)}
    )
    assert truncated.status == 400 and "input 'x'" in (await truncated.json())["error"]

    for path in (f"/v2/models/{name}/versions/9/infer", "/v2/models/nothing-here/infer"):
        missing = await api.post(path, json=json_request(np.zeros((1, 4), np.float32)), headers=tenant.headers)
        assert missing.status == 404, path
        assert set(await missing.json()) == {"error"}
    unauthenticated = await api.post(f"/v2/models/{name}/infer", json={})
    assert unauthenticated.status == 401 and "error" in await unauthenticated.json()
    assert (await api.get("/v2/nowhere", headers=tenant.headers)).status == 404


def ids_request(ids: list[list[int]]) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "ids", "datatype": "INT64", "shape": [len(ids), len(ids[0])], "data": [i for r in ids for i in r]}
        ]
    }


async def test_input_the_model_cannot_run_is_400_and_its_batch_mates_still_get_outputs(api, tenant, db):
    # an embedding table of 8 rows: id 8 is past it, as 600 tokens are past MiniLM's 512 positions; the
    # signature cannot tell (ids are any INT64), only ONNX Runtime's run does. Both requests share one batch.
    name = await deployed_model(
        api, tenant, embedding_lookup(rows=8), prefix="emb", max_batch_size=2, max_queue_delay_us=2_000_000
    )
    good, bad = await asyncio.gather(
        infer(api, tenant, name, ids_request([[1, 7]])), infer(api, tenant, name, ids_request([[2, 8]]))
    )
    assert good.status == 200, await good.text()
    embedded = (await good.json())["outputs"][0]
    assert embedded["shape"] == [1, 2, 4] and embedded["data"] == [1.0] * 4 + [7.0] * 4
    assert bad.status == 400, await bad.text()
    error = (await bad.json())["error"]
    assert error.startswith("the model cannot run this input: ") and "\n" not in error
    assert "Gather" in error and "out of data bounds" in error and "'ids' int64 [1, 2]" in error

    alone = await infer(api, tenant, name, ids_request([[9, 0], [1, 2]]))  # a request of its own, run once
    assert alone.status == 400 and "out of data bounds" in (await alone.json())["error"]

    records = await recorded(db, tenant.id, 3)
    assert sorted(r.status for r in records) == ["failed", "failed", "succeeded"]
    assert {r.error["code"] for r in records if r.error} == {"invalid_input"}
    metrics = (await (await api.get("/metrics")).text()).splitlines()
    invalid = [
        line
        for line in metrics
        if line.startswith("maas_inference_rejections_total{")
        and f'model="{name}"' in line
        and 'reason="invalid"' in line
    ]
    assert len(invalid) == 1 and float(invalid[0].split()[-1]) == 2, invalid
    calls = [line for line in metrics if line.startswith("maas_inference_batch_size_count{") and f'"{name}"' in line]
    # the pair's merged call and each of them alone, then the lone request's call
    assert len(calls) == 1 and float(calls[0].split()[-1]) == 4, calls


async def test_another_tenant_gets_404(api, tenant, other_tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    body = json_request(np.zeros((1, 4), np.float32))
    for answer in (
        await infer(api, other_tenant, name, body),
        await api.get(f"/v2/models/{name}", headers=other_tenant.headers),
        await api.get(f"/v2/models/{name}/ready", headers=other_tenant.headers),
        await api.get(f"/v1/models/{name}/deployment", headers=other_tenant.headers),
    ):
        assert answer.status == 404
    assert (await api.get("/v2/health/ready", headers=other_tenant.headers)).status == 503


async def test_concurrent_single_item_requests_share_onnxruntime_calls(api, tenant, db):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0], max_batch_size=64, max_queue_delay_us=200_000)
    rows = RNG.normal(size=(64, 4)).astype(np.float32)
    answers = await asyncio.gather(*(infer(api, tenant, name, json_request(rows[i : i + 1])) for i in range(64)))
    bodies = [await a.json() for a in answers]
    want = linear_expected(rows)
    for i, body in enumerate(bodies):
        scores = next(o for o in body["outputs"] if o["name"] == "scores")
        np.testing.assert_allclose(scores["data"], want["scores"][i], rtol=1e-6)

    records = await recorded(db, tenant.id, 64)
    assert {r.status for r in records} == {"succeeded"}
    batches: dict[str, list[Prediction]] = {}
    for record in records:
        batches.setdefault(record.batch_id, []).append(record)
    assert len(batches) <= 16, sorted(len(b) for b in batches.values())
    for members in batches.values():  # every request in a batch reports the batch's size
        assert {m.batch_size for m in members} == {len(members)}
    assert all(r.queue_ms is not None and r.inference_ms is not None for r in records)

    metrics = await (await api.get("/metrics")).text()
    assert f'maas_inference_batch_size_count{{model="{name}"' in metrics.replace(f'tenant="{tenant.id}",', "")


async def test_a_full_queue_answers_503_at_once_and_runs_nothing(api, tenant, db):
    # the batch waits 3 s for more requests, and only 2 may wait: the rest are refused
    name = await deployed_model(
        api, tenant, LINEAR_MODELS[0], max_batch_size=8, max_queue_delay_us=3_000_000, max_queue_size=2
    )
    x = np.ones((1, 4), np.float32)
    answers = await asyncio.gather(*(infer(api, tenant, name, json_request(x)) for _ in range(5)))
    statuses = sorted(a.status for a in answers)
    assert statuses == [200, 200, 503, 503, 503]
    for answer in answers:
        if answer.status == 503:
            assert answer.headers["Retry-After"] == "1"
            assert "queued" in (await answer.json())["error"]

    records = await recorded(db, tenant.id, 5)
    refused = [r for r in records if r.status == "failed"]
    served = [r for r in records if r.status == "succeeded"]
    assert len(refused) == 3 and all(r.error["code"] == "queue_full" and r.batch_id is None for r in refused)
    assert len(served) == 2 and served[0].batch_id == served[1].batch_id and served[0].batch_size == 2
    metrics = await (await api.get("/metrics")).text()
    assert any(
        line.startswith("maas_inference_rejections_total")
        and f'model="{name}"' in line
        and 'reason="queue_full"' in line
        for line in metrics.splitlines()
    )


async def test_a_request_past_its_timeout_is_answered_504_and_never_run(api, tenant, db):
    # nothing would leave the queue for 3 s; the deployment's 300 ms, or the request's own 100 ms, end it first
    name = await deployed_model(
        api, tenant, LINEAR_MODELS[0], max_batch_size=8, max_queue_delay_us=3_000_000, timeout_ms=300
    )
    x = np.ones((1, 4), np.float32)
    answers = [
        await infer(api, tenant, name, json_request(x)),
        await infer(api, tenant, name, json_request(x, parameters={"timeout": 100_000})),
    ]
    for answer in answers:
        assert answer.status == 504 and "timeout" in (await answer.json())["error"]
    records = await recorded(db, tenant.id, 2)
    assert [(r.status, r.error["code"], r.batch_id) for r in records] == [("failed", "timeout", None)] * 2


async def test_undeploy_drains_and_readiness_follows(api, tenant, db):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    assert (await api.get("/v2/health/ready", headers=tenant.headers)).status == 200
    removed = await api.delete(f"/v1/models/{name}/deployment", headers=tenant.headers)
    assert removed.status == 204
    assert (await api.delete(f"/v1/models/{name}/deployment", headers=tenant.headers)).status == 404

    async def not_ready() -> bool:
        return (await api.get("/v2/health/ready", headers=tenant.headers)).status == 503

    # readiness turns first; requests routed by a table that still lists the replica are served until it retires
    await eventually_async(not_ready, WAIT_S, "the tenant to be not ready")

    def replicas_left() -> int:
        with db() as session:
            return session.scalar(
                select(func.count())
                .select_from(ModelReplica)
                .join(ModelVersion, ModelVersion.id == ModelReplica.model_version_id)
                .join(Model, Model.id == ModelVersion.model_id)
                .where(Model.tenant_id == tenant.id, Model.name == name)
            )

    async def unloaded() -> bool:
        return await asyncio.to_thread(replicas_left) == 0

    await eventually_async(unloaded, WAIT_S, "the replica to be unloaded")

    async def refused() -> bool:
        return (await infer(api, tenant, name, json_request(np.zeros((1, 4), np.float32)))).status == 404

    await eventually_async(refused, WAIT_S, "the API to stop routing to the unloaded replica")
    answer = await infer(api, tenant, name, json_request(np.zeros((1, 4), np.float32)))
    assert answer.status == 404 and "not deployed" in (await answer.json())["error"]
    assert (await api.get(f"/v2/models/{name}/ready", headers=tenant.headers)).status == 404
    metadata = await api.get(f"/v2/models/{name}", headers=tenant.headers)
    assert metadata.status == 200  # still registered: its signature can be read


@pytest.mark.slow
async def test_a_version_switch_under_continuous_load_answers_every_request(api, tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0], max_batch_size=16, max_queue_delay_us=1_000)
    await register_version(api, tenant, name, LINEAR_MODELS[1])
    x = RNG.normal(size=(1, 4)).astype(np.float32)
    by_version = {"1": linear_expected(x, 0)["scores"], "2": linear_expected(x, 1)["scores"]}
    seen: list[tuple[int, str | None]] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set():
            answer = await infer(api, tenant, name, json_request(x))
            body = await answer.json()
            version = body.get("model_version")
            seen.append((answer.status, version))
            if answer.status == 200:
                scores = next(o for o in body["outputs"] if o["name"] == "scores")
                np.testing.assert_allclose(scores["data"], by_version[version].ravel(), rtol=1e-6)

    async def replica_versions() -> list[int]:
        shown = await (await api.get(f"/v1/models/{name}/deployment", headers=tenant.headers)).json()
        return [r["version"] for r in shown["replicas"]]

    clients = [asyncio.create_task(client()) for _ in range(8)]
    try:
        await asyncio.sleep(1.0)  # not a wait for anything: the switch must start under a second of steady load
        await deploy(api, tenant, name, 2)

        async def switched() -> bool:
            return await replica_versions() == [2] and seen[-1][1] == "2"

        await eventually_async(switched, WAIT_S, "version 1 to be unloaded")
        await asyncio.sleep(1.0)  # likewise: load on version 2 alone for a second before switching back under it
        await deploy(api, tenant, name, 1)  # and back, with the old version loaded again from scratch
        await eventually_async(lambda: bool(seen) and seen[-1][1] == "1", WAIT_S, "version 1 to serve again")

        async def switched_back() -> bool:
            return await replica_versions() == [1]

        # the load runs on until version 2 has drained and is unloaded, as version 1 was on the way there
        await eventually_async(switched_back, WAIT_S, "version 2 to be unloaded")
    finally:
        stop.set()
        await asyncio.gather(*clients)
    statuses = {status for status, _ in seen}
    assert statuses == {200}, [s for s in seen if s[0] != 200][:5]
    versions = [version for _, version in seen]
    assert versions.count("1") > 0 and versions.count("2") > 0 and len(seen) > 50
