"""Serverless benchmark: cold starts from zero, warm latency, scale-to-zero cycles and a memory budget.

On a throwaway ``maas up`` (bench/local_platform.py: API, worker and one model server, each a process)
and, for (d), a second one whose model server has a memory budget, over HTTP as a user meets it
(``POST /v2/models/{name}/infer`` with the binary tensor extension, like ``tritonclient.http``), for
the all-MiniLM-L6-v2 encoder in fp32 and int8 and a small CNN on scikit-learn's digits (the models
of bench/serving.py):

- (a) cold start: each model deployed with ``min_replicas`` 0 and ``idle_timeout_s`` 1; each cycle
  waits until the deployment has no replica (scaled to zero), sends one request and times it to its
  response. ``--cycles`` cycles with the artifact in the model server's local cache, and as many with
  the cache emptied first (the file comes from S3). Each cycle is split with the model server's own
  timings (``maas_replica_load_seconds`` by step: download, session, warmup, read from the API's
  /metrics before and after the cycle: one load per cycle) and the API's ``maas_cold_start_seconds``
  (arrival → sent); "other" is the client's time minus the load steps: placement, notifications, the
  routing refresh, the batch queue and HTTP;
- (b) warm: ``--warm`` requests one after another right after a cold start (p50);
- (c) scale-to-zero cycles: one client sends a request at random intervals around the idle timeout
  (0.6 to 1.8 x ``idle_timeout_s``), so requests land on a loaded replica, on one being unloaded,
  and on none; it runs until the model server has unloaded the model ``--cycles`` times and counts
  every answer that is not 200 (target 0);
- (d) a memory budget: a second platform whose model server may hold a third of the models' measured
  total memory (at least the largest model plus a quarter, or it fits nowhere), the three models plus
  copies of MiniLM int8 under other names (so several models compete for it); ``--clients`` clients
  call them in random order for ``--seconds``: hit rate (requests that found their model loaded, i.e.
  that caused no load), loads per minute, latency p50/p99, and the most memory the server reported
  against its budget (sampled every 0.5 s).

Run (about 10 minutes on 2 cores; ``--quick``: 3 cycles, int8 and digits only, a 40 s budget run):

    .venv/bin/python bench/serverless.py [--quick] [--models minilm-int8,minilm-fp32,digits-cnn]

Prints a table and writes bench/results/serverless.json (``--quick``: serverless-quick.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import random
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families

from bench.local_platform import Platform, local_platform
from bench.serving import BenchModel, _cpu_model, _percentiles, build_cnn, build_minilm, platform_bodies

RESULTS = Path(__file__).resolve().parent / "results" / "serverless.json"
MODELS = ("minilm-int8", "minilm-fp32", "digits-cnn")
QUICK_MODELS = ("minilm-int8", "digits-cnn")
LOAD_STEPS = ("download", "session", "warmup")
# (d)'s budget holds the largest model this many times over: one load of a model can measure ~10% more than
# another (a budget 5% above fp32's measure failed it in the budget run once it measured more there)
LARGEST_ROOM = 1.25
SCALING = {"min_replicas": 0, "idle_timeout_s": 1, "cold_start_timeout_ms": 60_000}
BATCHING = {"max_batch_size": 16, "max_queue_delay_us": 0}
GOALS = {"model": "minilm-int8", "cold_p50_cache_s": 0.7, "cold_p50_s3_s": 1.0, "failed_requests": 0}


# ---------------------------------------------------------------- the platform over HTTP


def metrics(maas: Platform) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the API's /metrics (its own and the model servers'), keyed by name and labels."""
    request = urllib.request.Request(maas.url + "/metrics", headers={"Authorization": f"Bearer {maas.key}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def metric_sum(samples: Mapping[tuple[str, tuple], float], name: str, **labels: str) -> float:
    """The sum over every series of ``name`` whose labels include ``labels`` (e.g. over model servers)."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def deploy(maas: Platform, model: BenchModel, name: str, settings: Mapping[str, int]) -> dict[str, Any]:
    upload = maas.call(
        "POST",
        f"/v1/files?purpose=model&filename={name}.onnx",
        raw=model.onnx_path.read_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    version = maas.call("POST", f"/v1/models/{name}/versions", {"file_id": upload["id"]})
    return maas.call("PUT", f"/v1/models/{name}/deployment", {"version": version["version"], **settings})


def deployment(maas: Platform, name: str) -> dict[str, Any]:
    return maas.call("GET", f"/v1/models/{name}/deployment")


def wait_for(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} after {timeout_s} s")
        time.sleep(interval_s)


def wait_at_zero(maas: Platform, name: str, timeout_s: float = 120) -> None:
    wait_for(lambda: not deployment(maas, name)["replicas"], timeout_s, f"{name} still has replicas")


def wait_loaded(maas: Platform, name: str, timeout_s: float = 300) -> dict[str, Any]:
    def loaded() -> dict[str, Any] | None:
        shown = deployment(maas, name)
        if shown["status"] == "failed":
            raise RuntimeError(f"{name} failed: {shown.get('status_reason')}")
        return next((r for r in shown["replicas"] if r["status"] == "ready"), None)

    return wait_for(loaded, timeout_s, f"{name} has no ready replica", interval_s=0.2)


def wait_measured(maas: Platform, name: str, timeout_s: float = 60) -> int:
    """The memory a ready replica holds once its twin session is open and measured too (until then it holds
    the placer's reservation): the figure once it stays the same for 1.5 s."""
    seen: list[int] = []

    def settled() -> int | None:
        replica = wait_loaded(maas, name)
        seen.append(replica["memory_bytes"])
        return seen[-1] if len(seen) >= 4 and len(set(seen[-4:])) == 1 else None

    return wait_for(settled, timeout_s, f"{name}'s memory did not settle", interval_s=0.5)


def empty_cache(maas: Platform) -> None:
    """The model server's local artifact cache (core.settings: data_dir/model-cache), emptied: the next load
    downloads from S3."""
    folder = maas.data_dir / "model-cache"
    if folder.exists():
        for entry in folder.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


async def send(session: aiohttp.ClientSession, url: str, body: tuple[bytes, dict[str, str]]) -> tuple[int, float]:
    """One inference request: (status, seconds to the whole response)."""
    started = time.perf_counter()
    async with session.post(url, data=body[0], headers=body[1]) as response:
        await response.read()
        return response.status, time.perf_counter() - started


# ---------------------------------------------------------------- (a, b) cold starts and warm latency


async def cold_starts(maas: Platform, model: BenchModel, name: str, cycles: int, warm: int) -> dict[str, Any]:
    url = f"{maas.url}/v2/models/{name}/infer"
    bodies = platform_bodies(model, maas.key)
    results: dict[str, Any] = {}
    warm_seconds: list[float] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        for source in ("cache", "s3"):
            runs = []
            for cycle in range(cycles):
                await asyncio.to_thread(wait_at_zero, maas, name)
                if source == "s3":
                    empty_cache(maas)
                before = await asyncio.to_thread(metrics, maas)
                status, seconds = await send(session, url, bodies[cycle % len(bodies)])
                if status == 200 and source == "cache" and cycle == cycles - 1:
                    for index in range(warm):  # the replica is up: warm requests, one after another
                        ok, warm_s = await send(session, url, bodies[index % len(bodies)])
                        if ok == 200:
                            warm_seconds.append(warm_s)
                after = await asyncio.to_thread(metrics, maas)
                runs.append(split(status, seconds, before, after))
            results[source] = summarize(runs)
            print(f"  (a) {name:<14} from {source:<5} p50 {ms(results[source]['total_ms'])} ms", flush=True)
    results["warm_ms"] = _percentiles(warm_seconds) if warm_seconds else None
    return results


def split(status: int, seconds: float, before: Mapping, after: Mapping) -> dict[str, Any]:
    """One cycle: the client's time, the load steps the model server timed, the API's hold time."""
    steps = {}
    for step in LOAD_STEPS:
        loads = metric_sum(after, "maas_replica_load_seconds_count", step=step) - metric_sum(
            before, "maas_replica_load_seconds_count", step=step
        )
        total = metric_sum(after, "maas_replica_load_seconds_sum", step=step) - metric_sum(
            before, "maas_replica_load_seconds_sum", step=step
        )
        steps[step] = total if loads == 1 else None  # only a cycle with exactly one load splits cleanly
    held = metric_sum(after, "maas_cold_start_seconds_sum") - metric_sum(before, "maas_cold_start_seconds_sum")
    held_count = metric_sum(after, "maas_cold_start_seconds_count") - metric_sum(
        before, "maas_cold_start_seconds_count"
    )
    known = [v for v in steps.values() if v is not None]
    return {
        "status": status,
        "total_s": seconds,
        **{f"{step}_s": value for step, value in steps.items()},
        "api_held_s": held if held_count == 1 else None,
        "other_s": seconds - sum(known) if len(known) == len(LOAD_STEPS) else None,
    }


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if r["status"] == 200]
    summary: dict[str, Any] = {"cycles": len(runs), "failed": len(runs) - len(ok)}
    for key in ("total", *LOAD_STEPS, "api_held", "other"):  # percentiles in milliseconds
        values = [r[f"{key}_s"] for r in ok if r[f"{key}_s"] is not None]
        summary[f"{key}_ms"] = _percentiles(values) if values else None
    summary["runs"] = list(runs)
    return summary


async def trace(maas: Platform, model: BenchModel, name: str) -> list[dict[str, Any]]:
    """One cold start from the local cache, as a timeline: the client's send and answer, and between them the
    serving events the placer and the model server wrote (their timestamps are PostgreSQL's, same host clock)."""
    await asyncio.to_thread(wait_at_zero, maas, name)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        sent = datetime.now(UTC)
        status, _ = await send(session, f"{maas.url}/v2/models/{name}/infer", platform_bodies(model, maas.key)[0])
        answered = datetime.now(UTC)
    events = await asyncio.to_thread(deployment, maas, name)
    steps = [{"at": sent, "who": "client", "what": f"POST /v2/models/{name}/infer (deployment at zero)"}]
    for event in reversed(events["events"]):  # the newest come first
        at = datetime.fromisoformat(event["created_at"].replace("Z", "+00:00"))
        if at >= sent:
            who = "placer" if event["action"] in ("assign", "evict", "scale_up", "scale_down", "failed") else "server"
            steps.append({"at": at, "who": who, "what": f"{event['action']}: {event['reason']}"})
    steps.append({"at": answered, "who": "client", "what": f"answer {status}"})
    timeline = [
        {"t_ms": round((step["at"] - sent).total_seconds() * 1000, 1), "who": step["who"], "what": step["what"]}
        for step in sorted(steps, key=lambda step: step["at"])
    ]
    for step in timeline:
        print(f"  trace {step['t_ms']:>8.1f} ms  {step['who']:<7} {step['what']}", flush=True)
    return timeline


# ---------------------------------------------------------------- (c) scale-to-zero cycles under traffic


async def zero_cycles(maas: Platform, model: BenchModel, name: str, cycles: int) -> dict[str, Any]:
    url = f"{maas.url}/v2/models/{name}/infer"
    bodies = platform_bodies(model, maas.key)
    idle_s = SCALING["idle_timeout_s"]
    unloads = lambda samples: metric_sum(samples, "maas_replica_unloads_total", reason="idle")  # noqa: E731
    first = unloads(await asyncio.to_thread(metrics, maas))
    statuses: dict[str, int] = {}
    rng = random.Random(7)
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        while unloads(await asyncio.to_thread(metrics, maas)) - first < cycles:
            status, _ = await send(session, url, bodies[rng.randrange(len(bodies))])
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            await asyncio.sleep(rng.uniform(0.6, 1.8) * idle_s)
            if time.monotonic() - started > 60 * cycles:
                break
    done = unloads(await asyncio.to_thread(metrics, maas)) - first
    failed = sum(n for s, n in statuses.items() if s != "200")
    print(f"  (c) {name:<14} {done:.0f} unloads, {sum(statuses.values())} requests, {failed} failed", flush=True)
    return {"unload_cycles": done, "requests": sum(statuses.values()), "failed": failed, "statuses": statuses}


# ---------------------------------------------------------------- (d) a memory budget


def budget_models(models: Sequence[BenchModel], copies: int) -> list[tuple[str, BenchModel]]:
    named = [(m.name, m) for m in models]
    int8 = next((m for m in models if m.name == "minilm-int8"), models[0])
    named += [(f"{int8.name}-copy{i}", replace(int8)) for i in range(1, copies + 1)]
    return named


async def budget_run(
    maas: Platform, named: Sequence[tuple[str, BenchModel]], budget: int, seconds: float, clients: int
) -> dict[str, Any]:
    bodies = {name: platform_bodies(model, maas.key) for name, model in named}
    before = await asyncio.to_thread(metrics, maas)
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    peak = {"memory_bytes": 0.0}
    over: list[float] = []  # the samples above the budget
    samples_taken = [0]
    stop = time.monotonic() + seconds

    async def client(index: int, session: aiohttp.ClientSession) -> None:
        rng = random.Random(index)
        while time.monotonic() < stop:
            name = rng.choice(list(bodies))
            status, took = await send(session, f"{maas.url}/v2/models/{name}/infer", rng.choice(bodies[name]))
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if status == 200:
                latencies.append(took)

    async def sample_memory() -> None:
        while time.monotonic() < stop:
            samples = await asyncio.to_thread(metrics, maas)
            held = metric_sum(samples, "maas_model_server_memory_bytes")
            peak["memory_bytes"] = max(peak["memory_bytes"], held)
            samples_taken[0] += 1
            if held > budget:
                over.append(held)
            await asyncio.sleep(0.5)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        await asyncio.gather(sample_memory(), *(client(i, session) for i in range(clients)))
    after = await asyncio.to_thread(metrics, maas)
    loads = metric_sum(after, "maas_replica_loads_total") - metric_sum(before, "maas_replica_loads_total")
    requests = sum(statuses.values())
    result = {
        "models": [name for name, _ in named],
        "budget_bytes": budget,
        "clients": clients,
        "seconds": seconds,
        "requests": requests,
        "failed": requests - statuses.get("200", 0),
        "statuses": statuses,
        "loads": loads,
        "loads_per_minute": round(loads / seconds * 60, 1),
        "hit_rate": round(1 - loads / requests, 3) if requests else None,
        "latency_ms": _percentiles(latencies) if latencies else None,
        "peak_memory_bytes": peak["memory_bytes"],
        "over_budget": peak["memory_bytes"] > budget,
        "memory_samples": samples_taken[0],
        "memory_samples_over_budget": len(over),
    }
    print(f"  (d) {requests} requests, {loads:.0f} loads, hit rate {result['hit_rate']}", flush=True)
    return result


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help=f"comma-separated, among {', '.join(MODELS)}")
    parser.add_argument("--cycles", type=int, default=10, help="cold starts per model and source, and (c)'s unloads")
    parser.add_argument("--warm", type=int, default=50, help="warm requests after the last cold start from cache")
    parser.add_argument("--seconds", type=float, default=120.0, help="(d)'s run")
    parser.add_argument("--clients", type=int, default=4, help="(d)'s clients")
    parser.add_argument("--copies", type=int, default=3, help="(d): extra copies of MiniLM int8 under other names")
    parser.add_argument("--quick", action="store_true", help="3 cycles, int8 and digits, a 40 s (d)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: a, c, d")
    parser.add_argument("--workdir", type=Path, default=None, help="keep built models here (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/results/serverless[-quick].json")
    args = parser.parse_args()
    if args.quick:
        args.cycles, args.warm, args.seconds, args.copies = 3, 20, 40.0, 2
    if args.out is None:  # a quick run never overwrites the full run's results
        args.out = RESULTS.with_name("serverless-quick.json") if args.quick else RESULTS
    names = [n.strip() for n in (args.models or ",".join(QUICK_MODELS if args.quick else MODELS)).split(",")]
    if unknown := set(names) - set(MODELS):
        parser.error(f"unknown models {sorted(unknown)}")
    skip = set(args.skip.split(",")) - {""}
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="maas-bench-serverless-"))
    workdir.mkdir(parents=True, exist_ok=True)
    load = psutil.getloadavg()
    print(f"load average before the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    builders = {
        "minilm-fp32": lambda: build_minilm(workdir, int8=False),
        "minilm-int8": lambda: build_minilm(workdir, int8=True),
        "digits-cnn": lambda: build_cnn(workdir),
    }
    models = [builders[name]() for name in names]

    rows: dict[str, dict[str, Any]] = {}
    with local_platform(worker_concurrency="1") as maas:
        for model in models:  # pinned (min_replicas 1) until its memory is known, then free to scale to zero
            version = deploy(maas, model, model.name, {**BATCHING, **SCALING, "min_replicas": 1})["version"]
            memory = wait_measured(maas, model.name)
            rows[model.name] = {"model": model.name, "notes": model.notes, "memory_bytes": memory}
            maas.call("PUT", f"/v1/models/{model.name}/deployment", {"version": version, **BATCHING, **SCALING})
        for model in models:
            if "a" not in skip:
                rows[model.name]["cold_start"] = asyncio.run(
                    cold_starts(maas, model, model.name, args.cycles, args.warm)
                )
            if "a" not in skip and model is models[0]:
                rows[model.name]["trace"] = asyncio.run(trace(maas, model, model.name))
            if "c" not in skip:
                rows[model.name]["zero_cycles"] = asyncio.run(zero_cycles(maas, model, model.name, args.cycles))

    budget_result = None
    if "d" not in skip:
        write(args, load, rows, None)  # (a)-(c) are kept whatever (d) does
        budget_result = budget_phase(args, models, rows)
    write(args, load, rows, budget_result)


def budget_phase(args: argparse.Namespace, models: Sequence[BenchModel], rows: Mapping[str, Any]) -> dict[str, Any]:
    named = budget_models(models, args.copies)
    memory = {name: rows[m.name]["memory_bytes"] or 0 for name, m in named}
    total = sum(memory.values())
    budget = int(max(total / 3, max(memory.values()) * LARGEST_ROOM))
    for attempt in (1, 2):  # a `maas up` that does not come up in time (a loaded machine) gets one more try
        try:
            with local_platform(worker_concurrency="1", model_server_memory_bytes=str(budget)) as maas:
                for name, model in named:
                    deploy(maas, model, name, {**BATCHING, "min_replicas": 0, "idle_timeout_s": 300,
                                               "cold_start_timeout_ms": 60_000})  # fmt: skip
                result = asyncio.run(budget_run(maas, named, budget, args.seconds, args.clients))
                return {**result, "memory_by_model": memory, "total_memory_bytes": total}
        except queue.Empty:
            print(f"  (d) the platform did not come up (attempt {attempt})", flush=True)
    return {"error": "the platform with a memory budget did not come up twice", "budget_bytes": budget}


def write(args: argparse.Namespace, load: Sequence[float], rows: Mapping[str, Any], budget: dict | None) -> None:
    budget_ok = budget if budget and "error" not in budget else None
    targets = goals_met(rows, budget_ok)
    print_table(rows, budget_ok)
    print(f"\ntargets: {json.dumps(targets)}")
    document = {
        "benchmark": "serverless",
        "when": datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "setup": {
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(),
            "load_average_before": [round(x, 2) for x in load],
            "platform": "bench/local_platform.py: `maas up`, one API, one worker, one model server (`maas serve`)",
            "deployment": {**BATCHING, **SCALING},
            "cycles": args.cycles,
            "cache": "the model server's local artifact cache (data_dir/model-cache); 'from S3' empties it before "
            "each cycle",
            "split": "download, session, warmup: the model server's maas_replica_load_seconds for the cycle's one "
            "load; api_held: the API's maas_cold_start_seconds (arrival to sent); other: the client's total minus the "
            "three load steps (placement, notifications, routing refresh, queue, HTTP)",
        },
        "targets": targets,
        "models": rows,
        "memory_budget": budget,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {args.out}")


def goals_met(rows: Mapping[str, dict[str, Any]], budget: dict[str, Any] | None) -> dict[str, Any]:
    row = rows.get(GOALS["model"], {}).get("cold_start")
    goals: dict[str, Any] = {"model": GOALS["model"]}
    if row:
        for source, goal in (("cache", GOALS["cold_p50_cache_s"]), ("s3", GOALS["cold_p50_s3_s"])):
            p50 = row[source]["total_ms"]["p50"] / 1000 if row[source]["total_ms"] else None
            met = p50 is not None and p50 <= goal
            goals[f"cold_p50_{source}_s"] = {"goal": f"<= {goal}", "measured": p50, "met": met}
    failed = sum(r.get("zero_cycles", {}).get("failed", 0) for r in rows.values())
    failed += sum(r.get("cold_start", {}).get(s, {}).get("failed", 0) for r in rows.values() for s in ("cache", "s3"))
    failed += budget["failed"] if budget else 0
    goals["failed_requests"] = {"goal": "0", "measured": failed, "met": failed == 0}
    if budget:
        goals["memory_within_budget"] = {"measured_peak": budget["peak_memory_bytes"], "budget": budget["budget_bytes"],
                                         "met": not budget["over_budget"]}  # fmt: skip
    return goals


def ms(p: Mapping[str, float] | None, key: str = "p50") -> str:
    return "-" if not p else f"{p[key]:.0f}"


def print_table(rows: Mapping[str, dict[str, Any]], budget: dict[str, Any] | None) -> None:
    print(f"\n{'model':<12} {'source':<6} {'cold p50':>9} {'cold p99':>9} {'download':>9} {'session':>8} "
          f"{'warmup':>7} {'other':>7} {'warm p50':>9} {'failed':>6}   (ms)")  # fmt: skip
    for name, row in rows.items():
        cold = row.get("cold_start")
        for source in ("cache", "s3") if cold else ():
            c = cold[source]
            print(f"{name:<12} {source:<6} {ms(c['total_ms']):>9} {ms(c['total_ms'], 'p99'):>9} "
                  f"{ms(c['download_ms']):>9} {ms(c['session_ms']):>8} {ms(c['warmup_ms']):>7} {ms(c['other_ms']):>7} "
                  f"{ms(cold['warm_ms']) if source == 'cache' else '':>9} {c['failed']:>6}")  # fmt: skip
    for name, row in rows.items():
        if z := row.get("zero_cycles"):
            print(f"{name:<12} scale-to-zero cycles: {z['unload_cycles']:.0f}, requests {z['requests']}, "
                  f"failed {z['failed']}")  # fmt: skip
    if budget:
        print(f"\nmemory budget {budget['budget_bytes'] / 2**20:.0f} MiB (models' total "
              f"{budget['total_memory_bytes'] / 2**20:.0f} MiB, {len(budget['models'])} models), {budget['clients']} "
              f"clients in random order for {budget['seconds']:.0f} s: hit rate {budget['hit_rate']}, "
              f"{budget['loads_per_minute']} loads/min, p50 {ms(budget['latency_ms'])} ms, "
              f"p99 {ms(budget['latency_ms'], 'p99')} ms, failed {budget['failed']}, peak memory "
              f"{budget['peak_memory_bytes'] / 2**20:.0f} MiB")  # fmt: skip


if __name__ == "__main__":
    main()
