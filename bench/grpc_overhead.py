"""What one inference call costs the API process, in CPU time: binary REST against gRPC, side by side.

Throughput on a shared machine is mostly noise; the CPU time the API process spends per call is not
(it is what the process itself burns, whoever else runs). So this bench starts a throwaway ``maas up``
(bench/local_platform.py) with the digits CNN of bench/serving.py deployed, and in alternating rounds
drives ``--calls`` single-item calls with ``--clients`` concurrent clients over binary REST
(``POST /v2/models/digits-cnn/infer``, the request tritonclient.http sends) and over gRPC (``ModelInfer``
with ``raw_input_contents``, as tritonclient.grpc sends it, one channel), reading the API process's
user + system CPU (all its threads: the event loop and grpc's poller) before and after each run. The API
process's CPU while idle (background refreshes) is measured first and reported, not subtracted.
Then the one-client p50 latency of each transport, alternating too (and with grpc's blocking stub).

``--floor`` measures the transports alone instead: one process serving a fixed reply over grpc.aio and
over aiohttp on one event loop (asyncio's, then uvloop's), its CPU per call; what no handler code can
remove. Its numbers go into the same JSON, under ``transport_floor``.

``--variant 'NAME:k=v[;k=v]'`` adds one more API process (``maas api``, gRPC on) on the same platform,
with MAAS_* settings ``k=v``, measured in the same rounds: settings compared side by side in one run.
The key ``tree=PATH`` runs that API from another copy of the code instead (say, the commit before a change).

    .venv/bin/python bench/grpc_overhead.py [--calls 3000 --clients 64 --rounds 3] \
        [--variant 'asyncio:api_event_loop=asyncio']

Prints a table and writes bench/results/grpc_overhead.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import grpc
import psutil

from api.oip_grpc import open_inference_grpc_pb2 as pb
from api.oip_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from bench.local_platform import Platform, extra_api, local_platform
from bench.serving import (
    _percentiles,
    _role,
    build_cnn,
    check_platform,
    check_platform_grpc,
    deploy,
    grpc_requests,
    platform_bodies,
    wait_ready,
)

RESULTS = Path(__file__).resolve().parent / "results" / "grpc_overhead.json"
FLOOR_LOOPS = ("asyncio", "uvloop")
TRANSPORTS = ("rest", "grpc")


async def rest_calls(url: str, bodies: Sequence[tuple[bytes, dict[str, str]]], calls: int, clients: int) -> list[float]:
    """``calls`` POSTs, ``clients`` at a time; each call's latency in seconds (only 200s are counted)."""
    latencies: list[float] = []
    turns = iter(range(calls))
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:

        async def client() -> None:
            for turn in turns:
                body, headers = bodies[turn % len(bodies)]
                sent = time.perf_counter()
                async with session.post(url, data=body, headers=headers) as response:
                    await response.read()
                    if response.status != 200:
                        raise RuntimeError(f"REST answered {response.status}")
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


async def grpc_calls(
    target: str, messages: Sequence[pb.ModelInferRequest], key: str, calls: int, clients: int
) -> list[float]:
    """:func:`rest_calls` over gRPC: one channel, ``clients`` ModelInfer calls in flight."""
    latencies: list[float] = []
    turns = iter(range(calls))
    metadata_ = (("authorization", f"Bearer {key}"),)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)

        async def client() -> None:
            for turn in turns:
                sent = time.perf_counter()
                await stub.ModelInfer(messages[turn % len(messages)], metadata=metadata_, timeout=120)
                latencies.append(time.perf_counter() - sent)

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies


def grpc_sync_calls(target: str, messages: Sequence[pb.ModelInferRequest], key: str, calls: int) -> list[float]:
    """One client with grpc's blocking stub, as tritonclient.grpc's ``infer`` calls it: no client event loop."""
    latencies: list[float] = []
    metadata_ = (("authorization", f"Bearer {key}"),)
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for turn in range(calls):
            sent = time.perf_counter()
            stub.ModelInfer(messages[turn % len(messages)], metadata=metadata_, timeout=120)
            latencies.append(time.perf_counter() - sent)
    return latencies


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system


# ---------------------------------------------------------------- the transports' floor


class _NoopService(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, response: pb.ModelInferResponse) -> None:
        self.response = response

    async def ModelInfer(self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext) -> Any:
        return self.response


def serve_noop(loop_kind: str, ports: Any) -> None:
    """A grpc.aio ModelInfer and an aiohttp POST on one event loop, both answering a fixed digits-sized reply at
    once: what each transport costs a server process per call with nothing behind it."""
    from aiohttp import web

    if loop_kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    response = pb.ModelInferResponse(model_name="digits-cnn", model_version="1")
    response.outputs.add(name="logits", datatype="FP32", shape=[1, 10])
    response.raw_output_contents.append(bytes(40))

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=bytes(140), content_type="application/octet-stream")

    async def run() -> None:
        server = grpc.aio.server()
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(_NoopService(response), server)
        grpc_port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        app = web.Application()
        app.router.add_post("/infer", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.put((grpc_port, runner.addresses[0][1]))
        await asyncio.Event().wait()

    loop.run_until_complete(run())


def measure_floor(model: Any, key: str, calls: int, clients: int, rounds: int) -> dict[str, Any]:
    """CPU ms per call of :func:`serve_noop`'s process, per loop and transport, alternating rounds."""
    import multiprocessing

    servers = {}
    for kind in FLOOR_LOOPS:
        ports: Any = multiprocessing.Queue()
        process = multiprocessing.Process(target=serve_noop, args=(kind, ports), daemon=True)
        process.start()
        servers[kind] = (process, *ports.get(timeout=60))
    bodies = platform_bodies(model, key)
    messages = grpc_requests(model)
    found: dict[str, dict[str, list[float]]] = {kind: {"rest": [], "grpc": []} for kind in FLOOR_LOOPS}
    try:
        for round_ in range(rounds):
            order = [(kind, transport) for kind in FLOOR_LOOPS for transport in TRANSPORTS]
            for kind, transport in order if round_ % 2 == 0 else order[::-1]:
                process, grpc_port, http_port = servers[kind]
                before = cpu_seconds(process.pid)
                if transport == "rest":
                    asyncio.run(rest_calls(f"http://127.0.0.1:{http_port}/infer", bodies, calls, clients))
                else:
                    asyncio.run(grpc_calls(f"127.0.0.1:{grpc_port}", messages, key, calls, clients))
                found[kind][transport].append(round((cpu_seconds(process.pid) - before) * 1000 / calls, 4))
    finally:
        for process, *_ in servers.values():
            process.terminate()
    return {
        "what": "a server process answering a fixed reply at once over grpc.aio ModelInfer and over an aiohttp POST "
        "(one event loop for both, like the API): the transport's own CPU per call",
        "clients": clients,
        "calls_per_run": calls,
        "cpu_ms_per_call": found,
        "median": {k: {t: sorted(v)[len(v) // 2] for t, v in rows.items()} for k, rows in found.items()},
    }


def measure(
    name: str, transport: str, api: tuple[str, str, int], maas: Platform, model: Any, calls: int, clients: int
) -> dict[str, Any]:
    url, target, pid = api
    before, started = cpu_seconds(pid), time.perf_counter()
    if transport == "rest":
        bodies = platform_bodies(model, maas.key)
        latencies = asyncio.run(rest_calls(f"{url}/v2/models/{model.name}/infer", bodies, calls, clients))
    elif transport == "grpc-sync":
        latencies = grpc_sync_calls(target, grpc_requests(model), maas.key, calls)
    else:
        latencies = asyncio.run(grpc_calls(target, grpc_requests(model), maas.key, calls, clients))
    wall = time.perf_counter() - started
    spent = cpu_seconds(pid) - before
    return {
        "api": name,
        "transport": transport,
        "clients": clients,
        "calls": len(latencies),
        "wall_s": round(wall, 2),
        "api_cpu_s": round(spent, 3),
        "api_cpu_ms_per_call": round(spent * 1000 / len(latencies), 4),
        "latency_ms": _percentiles(latencies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=3000, help="calls per run with --clients")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--one-client-calls", type=int, default=300)
    parser.add_argument("--variant", action="append", default=[], help="NAME:k=v[;k=v] another API, MAAS_ settings")
    parser.add_argument("--setting", action="append", default=[], help="MAAS_ setting of the whole platform, k=v")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--floor", action="store_true", help="only the transports' floor (no platform), added to --out's JSON"
    )
    args = parser.parse_args()
    if args.floor:
        with tempfile.TemporaryDirectory(prefix="maas-bench-grpc-") as workdir:
            model = build_cnn(Path(workdir))
        floor = measure_floor(model, "maas_floor", args.calls, args.clients, args.rounds)
        floor["load_average_before"] = [round(x, 2) for x in psutil.getloadavg()]
        for kind, row in floor["median"].items():
            print(f"floor {kind:<8} REST {row['rest']:.3f}  gRPC {row['grpc']:.3f} CPU ms/call (median)")
        document = json.loads(args.out.read_text()) if args.out.exists() else {}
        document["transport_floor"] = floor
        args.out.write_text(json.dumps(document, indent=2) + "\n")
        print(f"wrote {args.out}")
        return
    variants = {}
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        variants[name] = dict(pair.split("=", 1) for pair in pairs.split(";") if pair)
    load = psutil.getloadavg()
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    batching = {"max_batch_size": 64, "max_queue_delay_us": 0, "max_queue_size": 1024, "timeout_ms": 30_000}
    settings = {"worker_concurrency": "1", **dict(kv.split("=", 1) for kv in args.setting)}
    runs: list[dict[str, Any]] = []
    one_client: list[dict[str, Any]] = []
    idle: dict[str, float] = {}
    with (
        tempfile.TemporaryDirectory(prefix="maas-bench-grpc-") as workdir,
        local_platform(**settings) as maas,
        contextlib.ExitStack() as stack,
    ):
        model = build_cnn(Path(workdir))
        deploy(maas, model, batching)
        wait_ready(maas, [model.name])
        me = psutil.Process()
        main_pid = next(p.pid for p in me.children(recursive=True) if _role(p) == "api")
        apis = {"default": (maas.url, maas.grpc_target, main_pid)}
        for name, values in variants.items():
            values = dict(values)
            tree = values.pop("tree", None)  # another checkout of the code (e.g. the commit before a change)
            log = Path(workdir) / f"{name}.log"
            apis[name] = stack.enter_context(extra_api(maas, values, log, grpc=True, cwd=Path(tree) if tree else None))
        for url, target, _ in apis.values():  # every API answers what ONNX Runtime answers, both ways
            asyncio.run(check_platform(f"{url}/v2/models/{model.name}/infer", model, maas.key))
            asyncio.run(check_platform_grpc(target, model, maas.key))
        for name, (_, _, pid) in apis.items():
            before = cpu_seconds(pid)
            time.sleep(3)
            idle[name] = round((cpu_seconds(pid) - before) / 3 * 1000, 2)
        for name, api in apis.items():  # warm both paths of every API
            for transport in TRANSPORTS:
                measure(name, transport, api, maas, model, min(500, args.calls), args.clients)
        order = [(name, transport) for name in apis for transport in TRANSPORTS]
        # one client: the asyncio clients, and grpc's blocking stub (tritonclient.grpc's way)
        one_order = [(name, transport) for name in apis for transport in (*TRANSPORTS, "grpc-sync")]
        for round_ in range(args.rounds):
            for name, transport in order if round_ % 2 == 0 else order[::-1]:
                run = measure(name, transport, apis[name], maas, model, args.calls, args.clients)
                run["round"] = round_ + 1
                runs.append(run)
                print(
                    f"  round {round_ + 1} {name:<10} {transport:<5} {run['api_cpu_ms_per_call']:.3f} API CPU ms/call "
                    f"({run['calls']} calls in {run['wall_s']} s)",
                    flush=True,
                )
            for name, transport in one_order if round_ % 2 == 0 else one_order[::-1]:
                run = measure(name, transport, apis[name], maas, model, args.one_client_calls, 1)
                run["round"] = round_ + 1
                one_client.append(run)
    summary: dict[str, dict[str, Any]] = {}
    for name in apis:
        summary[name] = {}
        for transport in TRANSPORTS:
            mine = [r for r in runs if r["api"] == name and r["transport"] == transport]
            ones = [r for r in one_client if r["api"] == name and r["transport"] == transport]
            per_call = sorted(r["api_cpu_ms_per_call"] for r in mine)
            summary[name][transport] = {
                "api_cpu_ms_per_call_median": per_call[len(per_call) // 2],
                "api_cpu_ms_per_call_min": per_call[0],
                "api_cpu_ms_per_call_max": per_call[-1],
                "one_client_p50_ms_median": sorted(r["latency_ms"]["p50"] for r in ones)[len(ones) // 2],
                "one_client_api_cpu_ms_per_call_median": sorted(r["api_cpu_ms_per_call"] for r in ones)[len(ones) // 2],
            }
        syncs = sorted(r["latency_ms"]["p50"] for r in one_client if r["api"] == name and r["transport"] == "grpc-sync")
        summary[name]["grpc"]["one_client_blocking_stub_p50_ms_median"] = syncs[len(syncs) // 2]
    print(f"\n{'api':<12}{'transport':<11}{'CPU ms/call (median, min-max)':>32}{'1-client p50 ms':>18}")
    for name, rows in summary.items():
        for transport, row in rows.items():
            spread = f"{row['api_cpu_ms_per_call_min']:.3f}-{row['api_cpu_ms_per_call_max']:.3f}"
            print(
                f"{name:<12}{transport:<11}{row['api_cpu_ms_per_call_median']:>14.3f} ({spread:>13}){'':>3}"
                f"{row['one_client_p50_ms_median']:>18.2f}"
            )
        ratio = rows["grpc"]["api_cpu_ms_per_call_median"] / rows["rest"]["api_cpu_ms_per_call_median"]
        rows["grpc_over_rest_cpu"] = round(ratio, 3)
        print(
            f"{name:<12}gRPC/REST API CPU per call: {ratio:.2f}; 1-client p50 with grpc's blocking stub: "
            f"{rows['grpc']['one_client_blocking_stub_p50_ms_median']:.2f} ms"
        )
    document = {
        "benchmark": "grpc_overhead",
        "when": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "caveat": "taken on a shared, loaded machine (see load_average_before): latencies and wall times are noise; "
        "CPU time per call of the API process is the measure",
        "machine": {"cpus": os.cpu_count(), "load_average_before": [round(x, 2) for x in load]},
        "versions": {p: metadata.version(p) for p in ("grpcio", "aiohttp", "protobuf", "numpy")},
        "model": "digits-cnn (bench/serving.py), single-item calls",
        "clients": args.clients,
        "calls_per_run": args.calls,
        "variants": {"default": settings, **variants},
        "api_idle_cpu_ms_per_s": idle,
        "summary": summary,
        "runs": runs,
        "one_client_runs": one_client,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
