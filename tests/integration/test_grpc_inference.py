"""The Open Inference Protocol over gRPC, end to end: the API's gRPC endpoint, a real model server
(``python -m serving``), PostgreSQL and S3.

A stock ``tritonclient.grpc`` client (in a process of its own: its protos and ours share names) and
grpcio's own stub on our generated modules, with typed ``contents`` and with ``raw_input_contents``;
every error's status code and message; REST and gRPC requests merged into the same ONNX Runtime
calls, read from the recorded predictions (``batch_id``, ``transport``), never from wall-clock times.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp import web
from sqlalchemy import select

from api.app import create_app
from api.grpc_server import GRPC_ENDPOINT
from api.oip_grpc import open_inference_grpc_pb2 as pb
from api.oip_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from core.api_keys import revoke_key
from core.artifact_store import ArtifactStore
from core.models import Artifact, Prediction
from tests.support.api import deploy, deployed_model, infer, json_request, register_version
from tests.support.eventually import eventually_async
from tests.support.onnx_models import LINEAR_MODELS, linear_classifier, linear_expected, masked_sum
from tests.support.processes import REPO, inherited_env

WAIT_S = 90.0
RNG = np.random.default_rng(1)

pytestmark = pytest.mark.usefixtures("model_server")


def grpc_port(api) -> int:
    return api.app[GRPC_ENDPOINT].port


@pytest.fixture
async def stub(api) -> AsyncIterator[pb_grpc.GRPCInferenceServiceStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port(api)}") as channel:
        yield pb_grpc.GRPCInferenceServiceStub(channel)


def auth(tenant) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {tenant.key}"),)


def masked_sum_expected(ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(masked_sum(), providers=["CPUExecutionProvider"])
    masked, total = session.run(["masked", "total"], {"ids": ids, "mask": mask})
    return {"masked": masked, "total": total}


def raw_request(name: str, arrays: dict[str, np.ndarray], **extra: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, **extra)
    for input_name, array in arrays.items():
        datatype = {"int64": "INT64", "float32": "FP32", "float16": "FP16"}[array.dtype.name]
        request.inputs.add(name=input_name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.astype(array.dtype.newbyteorder("<")).tobytes())
    return request


def contents_request(name: str, arrays: dict[str, np.ndarray], **extra: Any) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=name, **extra)
    for input_name, array in arrays.items():
        if array.dtype == np.int64:
            tensor = request.inputs.add(name=input_name, datatype="INT64", shape=array.shape)
            tensor.contents.int64_contents.extend(array.ravel().tolist())
        else:
            tensor = request.inputs.add(name=input_name, datatype="FP32", shape=array.shape)
            tensor.contents.fp32_contents.extend(array.ravel().tolist())
    return request


def response_arrays(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    dtypes = {"INT64": "<i8", "FP32": "<f4"}
    arrays = {}
    for index, output in enumerate(response.outputs):
        if response.raw_output_contents:
            data = np.frombuffer(response.raw_output_contents[index], dtype=dtypes[output.datatype])
        else:
            field = {"INT64": "int64_contents", "FP32": "fp32_contents"}[output.datatype]
            data = np.array(getattr(output.contents, field), dtype=dtypes[output.datatype])
        arrays[output.name] = data.reshape(list(output.shape))
    return arrays


async def refused(call) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def predictions(db, tenant_id: str) -> list[Prediction]:
    with db() as session:
        return list(session.scalars(select(Prediction).where(Prediction.tenant_id == tenant_id)))


async def recorded(db, tenant_id: str, count: int) -> list[Prediction]:
    async def enough() -> list[Prediction]:  # written in bulk by the API on this event loop: do not block it
        rows = await asyncio.to_thread(predictions, db, tenant_id)
        return rows if len(rows) >= count else []

    return await eventually_async(enough, WAIT_S, f"{count} recorded predictions")


# ---------------------------------------------------------------- clients


async def test_stock_tritonclient_grpc_works_unchanged(api, tenant, tmp_path: Path):
    name = await deployed_model(api, tenant, masked_sum(), prefix="ms")
    ids = RNG.integers(0, 100, size=(3, 5)).astype(np.int64)
    mask = (RNG.random((3, 5)) > 0.3).astype(np.int64)
    np.savez(tmp_path / "inputs.npz", ids=ids, mask=mask)
    argv = [sys.executable, "-m", "tests.support.tritonclient_grpc", f"127.0.0.1:{grpc_port(api)}", tenant.key, name]
    argv += [str(tmp_path / "inputs.npz"), str(tmp_path / "outputs.npz")]
    # the API answers on this event loop: the client process is waited for in a thread
    done = await asyncio.to_thread(
        subprocess.run, argv, cwd=REPO, env={**inherited_env(), "PYTHONPATH": str(REPO)}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["live"] and found["ready"] and found["model_ready"]
    assert found["server"]["name"] == "maas"
    model = found["model"]
    assert (model["name"], model["versions"], model["platform"]) == (name, ["1"], "onnxruntime_onnx")
    assert model["inputs"] == [
        {"name": "ids", "datatype": "INT64", "shape": ["-1", "-1"]},
        {"name": "mask", "datatype": "INT64", "shape": ["-1", "-1"]},
    ]
    assert found["response"] == {"model_name": name, "id": "triton-1"}
    outputs = dict(np.load(tmp_path / "outputs.npz"))
    want = masked_sum_expected(ids, mask)
    np.testing.assert_array_equal(outputs["masked"], want["masked"])
    np.testing.assert_array_equal(outputs["total"], want["total"])
    assert found["unknown_model"][0] == "StatusCode.NOT_FOUND" and "no-such-model" in found["unknown_model"][1]
    assert found["no_key"][0] == "StatusCode.UNAUTHENTICATED" and "Authorization" in found["no_key"][1]


async def test_grpc_stub_with_contents_and_with_raw_contents(api, tenant, stub, db):
    name = await deployed_model(api, tenant, masked_sum(), prefix="ms")
    ids = RNG.integers(0, 100, size=(2, 7)).astype(np.int64)
    mask = (RNG.random((2, 7)) > 0.5).astype(np.int64)
    want = masked_sum_expected(ids, mask)

    typed = await stub.ModelInfer(contents_request(name, {"ids": ids, "mask": mask}, id="c-1"), metadata=auth(tenant))
    assert (typed.model_name, typed.model_version, typed.id) == (name, "1", "c-1")
    assert not typed.raw_output_contents  # asked in contents, answered in contents
    raw = await stub.ModelInfer(raw_request(name, {"ids": ids, "mask": mask}), metadata=auth(tenant))
    assert len(raw.raw_output_contents) == 2  # asked raw, answered raw, as tritonclient expects
    for response in (typed, raw):
        got = response_arrays(response)
        np.testing.assert_array_equal(got["masked"], want["masked"])
        np.testing.assert_array_equal(got["total"], want["total"])

    only = pb.ModelInferRequest.InferRequestedOutputTensor(name="total")
    one = await stub.ModelInfer(raw_request(name, {"ids": ids, "mask": mask}, outputs=[only]), metadata=auth(tenant))
    assert [o.name for o in one.outputs] == ["total"]

    ready = await stub.ModelReady(pb.ModelReadyRequest(name=name, version="1"), metadata=auth(tenant))
    assert ready.ready
    metadata = await stub.ModelMetadata(pb.ModelMetadataRequest(name=name), metadata=auth(tenant))
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("masked", "INT64", [-1, -1]),
        ("total", "FP32", [-1]),
    ]

    records = await recorded(db, tenant.id, 3)
    assert {(r.status, r.transport) for r in records} == {("succeeded", "grpc")}
    assert all(r.batch_id and r.batch_size == 2 for r in records)
    metrics = (await (await api.get("/metrics")).text()).splitlines()
    counted = [line for line in metrics if line.startswith("maas_api_inference_requests_total{")]
    assert any('transport="grpc"' in line and 'outcome="ok"' in line for line in counted), counted
    calls = [line for line in metrics if line.startswith("maas_grpc_requests_total{") and "ModelInfer" in line]
    assert any('code="OK"' in line for line in calls), calls


# ---------------------------------------------------------------- errors


async def test_keys_tenants_and_unknown_models(api, tenant, other_tenant, stub, db):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    x = np.ones((1, 4), np.float32)

    missing = await refused(stub.ServerLive(pb.ServerLiveRequest()))
    assert missing.code() == grpc.StatusCode.UNAUTHENTICATED and "missing Authorization" in missing.details()
    unknown_key = await refused(stub.ServerReady(pb.ServerReadyRequest(), metadata=(("authorization", "Bearer nope"),)))
    assert unknown_key.code() == grpc.StatusCode.UNAUTHENTICATED and "unknown API key" in unknown_key.details()

    for call in (
        stub.ModelInfer(raw_request(name, {"x": x}), metadata=auth(other_tenant)),
        stub.ModelMetadata(pb.ModelMetadataRequest(name=name), metadata=auth(other_tenant)),
        stub.ModelReady(pb.ModelReadyRequest(name=name), metadata=auth(other_tenant)),
    ):
        other = await refused(call)
        assert other.code() == grpc.StatusCode.NOT_FOUND and f"unknown model '{name}'" in other.details()
    nothing = await refused(stub.ModelInfer(raw_request("nothing-here", {"x": x}), metadata=auth(tenant)))
    assert nothing.code() == grpc.StatusCode.NOT_FOUND and "nothing-here" in nothing.details()
    no_version = await refused(stub.ModelInfer(raw_request(name, {"x": x}, model_version="9"), metadata=auth(tenant)))
    assert no_version.code() == grpc.StatusCode.NOT_FOUND and "no version 9" in no_version.details()

    with db() as session:
        revoke_key(session, tenant.key_id)
        session.commit()

    async def revoked() -> grpc.aio.AioRpcError | None:
        try:
            await stub.ServerLive(pb.ServerLiveRequest(), metadata=auth(tenant))
        except grpc.aio.AioRpcError as exc:
            return exc
        return None

    error = await eventually_async(revoked, 10, "the revocation to reach the API")
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in error.details()


async def test_bad_inputs_are_invalid_argument_naming_the_input(api, tenant, stub):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0])
    x = np.ones((1, 4), np.float32)
    short = raw_request(name, {"x": x})
    short.raw_input_contents[0] = short.raw_input_contents[0][:-4]
    mixed = raw_request(name, {"x": x})
    mixed.inputs[0].contents.fp32_contents.extend([1.0] * 4)
    wrong_field = contents_request(name, {"x": x})
    wrong_field.inputs[0].contents.int64_contents.append(1)
    cases = [
        (raw_request(name, {"z": x}), "input 'z' is not an input of this model"),
        (raw_request(name, {"x": x.astype(np.int64)}), "input 'x' has datatype INT64 but the model expects FP32"),
        (raw_request(name, {"x": np.ones((1, 5), np.float32)}), "input 'x' has shape [1, 5]"),
        (raw_request(name, {"x": np.ones((40, 4), np.float32)}), "input 'x' has 40 rows"),
        (raw_request(name, {"x": x.astype(np.float16)}), "input 'x' has datatype FP16"),
        (short, "input 'x' has 12 bytes of raw_input_contents but shape [1, 4] of FP32 needs 16"),
        (mixed, "input 'x' has contents but the request uses raw_input_contents"),
        (contents_request(name, {"x": np.ones((1, 3), np.float32)}), "input 'x' has shape [1, 3]"),
        (wrong_field, "input 'x' is FP32 but its contents hold int64_contents"),
        (pb.ModelInferRequest(model_name=name), "missing input 'x'"),
    ]
    fp16 = pb.ModelInferRequest(model_name=name)
    fp16.inputs.add(name="x", datatype="FP16", shape=[1, 4])
    cases.append((fp16, "input 'x' is FP16, which has no typed contents; send it in raw_input_contents"))
    for request, words in cases:
        error = await refused(stub.ModelInfer(request, metadata=auth(tenant)))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (words, error.details())
        assert words in error.details(), (words, error.details())


async def test_messages_over_the_limit_are_resource_exhausted(aiohttp_client, settings, tenant):
    small = await aiohttp_client(create_app(settings.model_copy(update={"grpc_max_message_bytes": 4096})))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port(small)}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        big = raw_request("anything", {"x": np.zeros((1, 2048), np.float32)})
        error = await refused(stub.ModelInfer(big, metadata=auth(tenant)))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in error.details() and "4096" in error.details()


async def test_a_taken_port_stops_the_api_with_the_reason(settings):
    # as web.run_app does: the start-up fails, then the clean-up stops what had started (the router, the listener)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runner = web.AppRunner(create_app(settings.model_copy(update={"grpc_port": port})))
        try:
            with pytest.raises(RuntimeError, match=f"cannot listen on 127.0.0.1:{port} .*MAAS_GRPC_PORT"):
                await runner.setup()
        finally:
            await runner.cleanup()


async def test_full_queue_and_not_ready_are_unavailable(api, tenant, stub, settings, db):
    # the batch waits 3 s for more requests, and only 2 may wait: the other 3 are refused at once
    name = await deployed_model(
        api, tenant, LINEAR_MODELS[0], max_batch_size=8, max_queue_delay_us=3_000_000, max_queue_size=2
    )
    x = np.ones((1, 4), np.float32)
    calls = [stub.ModelInfer(raw_request(name, {"x": x}), metadata=auth(tenant)) for _ in range(5)]
    answers = await asyncio.gather(*calls, return_exceptions=True)
    errors = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert len(errors) == 3, answers
    assert all(e.code() == grpc.StatusCode.UNAVAILABLE and "queued" in e.details() for e in errors)

    # a version whose artifact changed never loads (its sha256 does not match): deployed, never ready
    broken = "broken-lin"
    # bytes of its own: a model server's local cache (keyed by sha256) cannot already hold them
    rng = np.random.default_rng()
    version = await register_version(
        api, tenant, broken, linear_classifier(rng.normal(size=(4, 3)), rng.normal(size=3))
    )
    with db() as session:
        key = session.scalar(select(Artifact.storage_key).where(Artifact.id == version["artifact"]["id"]))
    await asyncio.to_thread(ArtifactStore(settings).upload_chunks, key, [LINEAR_MODELS[1]])
    await deploy(api, tenant, broken, 1)
    not_ready = await refused(stub.ModelInfer(raw_request(broken, {"x": x}), metadata=auth(tenant)))
    assert not_ready.code() == grpc.StatusCode.UNAVAILABLE and "not ready" in not_ready.details()
    ready = await stub.ModelReady(pb.ModelReadyRequest(name=broken), metadata=auth(tenant))
    assert not ready.ready


async def test_queue_timeout_is_deadline_exceeded_and_a_client_deadline_drops_the_queued_request(api, tenant, stub, db):
    # nothing would leave the queue for 3 s: the deployment's 300 ms ends the first request there
    name = await deployed_model(
        api, tenant, LINEAR_MODELS[0], max_batch_size=8, max_queue_delay_us=3_000_000, timeout_ms=300
    )
    x = np.ones((1, 4), np.float32)
    timed_out = await refused(stub.ModelInfer(raw_request(name, {"x": x}), metadata=auth(tenant)))
    assert timed_out.code() == grpc.StatusCode.DEADLINE_EXCEEDED and "timeout" in timed_out.details()

    # no deployment timeout: the client's own 0.5 s deadline is the request's time in the queue
    waits = await deployed_model(
        api, tenant, LINEAR_MODELS[0], max_batch_size=8, max_queue_delay_us=3_000_000, timeout_ms=0
    )
    gave_up = await refused(stub.ModelInfer(raw_request(waits, {"x": x}), metadata=auth(tenant), timeout=0.5))
    assert gave_up.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    records = sorted(await recorded(db, tenant.id, 2), key=lambda r: r.created_at)
    assert [(r.status, r.batch_id, r.transport) for r in records] == [("failed", None, "grpc")] * 2
    assert records[0].error["code"] == "timeout"
    # the queue drops it as the client's deadline passes; which of the two the API sees first varies
    assert records[1].error["code"] in ("timeout", "cancelled")

    async def dropped_in_the_queue() -> bool:  # removed from the model server's queue, never run
        metrics = (await (await api.get("/metrics")).text()).splitlines()
        return any(
            line.startswith("maas_inference_rejections_total{")
            and f'model="{waits}"' in line
            and 'reason="timeout"' in line
            and float(line.split()[-1]) == 1
            for line in metrics
        )

    await eventually_async(dropped_in_the_queue, 10, "the model server to drop the abandoned request")


# ---------------------------------------------------------------- one batcher, two transports


async def test_rest_and_grpc_requests_share_onnxruntime_calls(api, tenant, stub, db):
    # 6 single-row requests arrive within the 2 s the first waits for company: one ONNX Runtime call
    name = await deployed_model(api, tenant, LINEAR_MODELS[0], max_batch_size=6, max_queue_delay_us=2_000_000)
    xs = [RNG.normal(size=(1, 4)).astype(np.float32) for _ in range(6)]
    rest = [infer(api, tenant, name, json_request(x)) for x in xs[:3]]
    grpc_calls = [stub.ModelInfer(raw_request(name, {"x": x}), metadata=auth(tenant)) for x in xs[3:]]
    answers = await asyncio.gather(*rest, *grpc_calls)
    for x, answer in zip(xs[:3], answers[:3], strict=True):
        assert answer.status == 200, await answer.text()
        scores = next(o for o in (await answer.json())["outputs"] if o["name"] == "scores")
        np.testing.assert_allclose(np.array(scores["data"]).reshape(1, 3), linear_expected(x)["scores"], rtol=1e-6)
    for x, answer in zip(xs[3:], answers[3:], strict=True):
        np.testing.assert_array_equal(response_arrays(answer)["scores"], linear_expected(x)["scores"])

    records = await recorded(db, tenant.id, 6)
    assert sorted(r.transport for r in records) == ["grpc"] * 3 + ["http"] * 3
    assert len({r.batch_id for r in records}) == 1 and records[0].batch_id is not None
    assert {r.batch_size for r in records} == {6}


async def test_stopping_drains_calls_in_flight(aiohttp_client, settings, api, tenant):
    name = await deployed_model(api, tenant, LINEAR_MODELS[0], max_batch_size=8, max_queue_delay_us=1_500_000)
    other = await aiohttp_client(create_app(settings))
    x = np.ones((1, 4), np.float32)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port(other)}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        await stub.ServerLive(pb.ServerLiveRequest(), metadata=auth(tenant))

        async def wait_routed() -> bool:  # this app's routing table knows the model
            return (await stub.ModelReady(pb.ModelReadyRequest(name=name), metadata=auth(tenant))).ready

        await eventually_async(wait_routed, WAIT_S, "the second app to route the model")
        in_flight = asyncio.ensure_future(stub.ModelInfer(raw_request(name, {"x": x}), metadata=auth(tenant)))
        await asyncio.sleep(0.3)  # queued in the model server, waiting 1.5 s for company
        await other.close()  # the app's shutdown: gRPC stops taking calls and drains
        answer = await in_flight
        np.testing.assert_array_equal(response_arrays(answer)["scores"], linear_expected(x)["scores"])
        after = await refused(stub.ServerLive(pb.ServerLiveRequest(), metadata=auth(tenant), timeout=2))
    assert after.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
