"""Live job events at scale: the API process's CPU while 10, 100 and 500 Server-Sent Events streams
watch one running job, and whether every stream got every event in order.

The API runs as its own process (``python -m api``) on a scratch database of the test services
(``MAAS_TEST_*``, or embedded ones, as in tests/support/services.py). This script plays the worker:
it inserts a running job's progress events one transaction each, at ``--rate`` per second for
``--seconds``, then the terminal status event, while the watchers (in this process) read their
streams. The API's CPU time over that window, from /proc through psutil, is the number.

    python -m bench.sse_watchers [--watchers 10,100,500] [--rate 10] [--seconds 20]

Prints a table and writes bench/results/sse_watchers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from sqlalchemy import select

from bench.local_platform import stop_process
from core.api_keys import create_key, create_tenant
from core.db import make_engine, session_factory
from core.ids import new_id
from core.jobs import add_event
from core.models import Job, JobEvent
from core.settings import Settings
from migrations import runner
from tests.support.services import running_services, scratch_database

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "sse_watchers.json"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def api_process(env: dict[str, str], port: int) -> Iterator[psutil.Process]:
    process = subprocess.Popen([sys.executable, "-m", "api"], cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the API did not start") from None
                time.sleep(0.2)
        yield psutil.Process(process.pid)
    finally:
        stop_process(process)


def new_running_job(db: Any, tenant_id: str) -> str:
    with db() as session:
        job = Job(
            id=new_id("job"),
            tenant_id=tenant_id,
            type="training",
            status="running",
            spec={},
            max_attempts=1,
            webhook_events_filter=[],
            metadata_={},
            started_at=datetime.now(UTC),
        )
        session.add(job)
        add_event(session, job.id, "status", "running", {"status": "running"})
        session.commit()
        return job.id


def produce(db: Any, job_id: str, rate: float, seconds: float) -> list[str]:
    """The worker's side: progress events one transaction each, then the job's end."""
    ids: list[str] = []
    steps = int(rate * seconds)
    started = time.monotonic()
    for step in range(1, steps + 1):
        time.sleep(max(0.0, started + step / rate - time.monotonic()))
        with db() as session:
            event = add_event(session, job_id, "progress", "", {"step": step, "total_steps": steps, "loss": 1 / step})
            session.commit()
            ids.append(event.id)
    with db() as session:
        session.get_one(Job, job_id).status = "succeeded"
        event = add_event(session, job_id, "status", "succeeded", {"status": "succeeded"})
        session.commit()
        ids.append(event.id)
    return ids


async def watch(session: aiohttp.ClientSession, url: str, key: str, ready: asyncio.Event) -> list[str]:
    ids: list[str] = []
    headers = {"Authorization": f"Bearer {key}", "Accept": "text/event-stream"}
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=None)) as stream:
        stream.raise_for_status()
        ready.set()
        async for raw in stream.content:
            if raw.startswith(b"id: "):
                ids.append(raw[4:].decode().strip())
    return ids


async def one_run(
    api: psutil.Process, db: Any, base_url: str, key: str, tenant_id: str, watchers: int, rate: float, seconds: float
) -> dict[str, Any]:
    job_id = new_running_job(db, tenant_id)
    url = f"{base_url}/v1/jobs/{job_id}/events"
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        readies = [asyncio.Event() for _ in range(watchers)]
        tasks = [asyncio.create_task(watch(session, url, key, ready)) for ready in readies]
        await asyncio.gather(*(r.wait() for r in readies))
        await asyncio.sleep(1.0)  # every stream past its first read: measure the steady state only
        before, started = api.cpu_times(), time.monotonic()
        produced = await asyncio.to_thread(produce, db, job_id, rate, seconds)
        received = await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
        after, wall = api.cpu_times(), time.monotonic() - started
    cpu_s = (after.user + after.system) - (before.user + before.system)
    with db() as session:
        stored = list(session.scalars(select(JobEvent.id).where(JobEvent.job_id == job_id).order_by(JobEvent.seq)))
    complete = all(r == stored for r in received)
    return {
        "watchers": watchers,
        "events": len(produced),
        "events_per_s": rate,
        "seconds": round(wall, 2),
        "api_cpu_s": round(cpu_s, 3),
        "api_cpu_percent_of_a_core": round(100 * cpu_s / wall, 1),
        "every_event_in_order": complete,
        "deliveries": sum(len(r) for r in received),
    }


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'watchers':>8}  {'events':>6}  {'seconds':>7}  {'API CPU (% of a core)':>21}  every event, in order")
    for row in rows:
        print(
            f"{row['watchers']:>8}  {row['events']:>6}  {row['seconds']:>7.1f}  "
            f"{row['api_cpu_percent_of_a_core']:>21.1f}  {'yes' if row['every_event_in_order'] else 'NO'}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--watchers", default="10,100,500")
    parser.add_argument("--rate", type=float, default=10.0, help="events per second of the running job")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    counts = [int(n) for n in args.watchers.split(",")]
    with running_services() as services, scratch_database(services.database_admin_url, "maas_bench") as url:
        runner.upgrade(url)
        settings = Settings(database_url=url, broker_url=services.broker_url, s3_endpoint_url=services.s3_endpoint_url)
        engine = make_engine(settings)
        db = session_factory(engine)
        with db() as session:
            tenant = create_tenant(session, "bench")
            key = create_key(session, tenant, "bench").key
            tenant_id = tenant.id
            session.commit()
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
        env.update(
            MAAS_DATABASE_URL=url,
            MAAS_BROKER_URL=services.broker_url,
            MAAS_S3_ENDPOINT_URL=services.s3_endpoint_url,
            MAAS_S3_ACCESS_KEY=services.s3_access_key or "",
            MAAS_S3_SECRET_KEY=services.s3_secret_key or "",
            MAAS_API_PORT=str(port),
            MAAS_GRPC_PORT="0",
            MAAS_LOG_FORMAT="text",
            MAAS_LOG_LEVEL="WARNING",
        )
        rows = []
        with api_process(env, port) as api:
            for watchers in counts:
                base_url = f"http://127.0.0.1:{port}"
                row = asyncio.run(one_run(api, db, base_url, key, tenant_id, watchers, args.rate, args.seconds))
                rows.append(row)
                print_table([row])
        engine.dispose()
    print()
    print_table(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "benchmark": "sse_watchers",
                "what": "API process CPU while N Server-Sent Events streams watch one running job",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
