"""Job types that exist only to exercise the job runner; registered by the test suite (the API app in
the test process imports this module, test workers load it with ``--include``), never shipped.

They use queues of their own, so product queues stay free for the tests of product job types:
``test-shared`` (the shared test worker), ``test-recovery`` (only the crash-recovery test's own
workers) and ``test-unclaimed`` (no worker at all).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from core.job_types import JobType, register_job_type
from core.models import File
from workers.job_runner import JobContext, JobFailed, handler


class SleepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    seconds: float = Field(default=0.0, ge=0, le=60)
    steps: int = Field(default=3, ge=0, le=1000)
    fail_with: str | None = None


class TreeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ignore_sigterm: bool = False


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_id: str


def _file_of_tenant(session, tenant_id: str, spec: FileSpec, settings) -> list[dict[str, str]]:
    found = session.scalar(select(File.id).where(File.id == spec.file_id, File.tenant_id == tenant_id))
    return [] if found else [{"pointer": "/file_id", "detail": "no such file"}]


for name, spec, queue, attempts in [
    ("test.sleep", SleepSpec, "test-shared", 3),
    ("test.process_tree", TreeSpec, "test-shared", 3),
    ("test.crash", Empty, "test-shared", 3),
    ("test.checkpointed", SleepSpec, "test-recovery", 3),
    ("test.unclaimed", Empty, "test-unclaimed", 3),
]:
    register_job_type(JobType(name=name, spec=spec, queue=queue, max_attempts=attempts))
register_job_type(JobType(name="test.needs_file", spec=FileSpec, queue="test-unclaimed", validate=_file_of_tenant))


@handler("test.sleep")
def sleep_job(ctx: JobContext) -> dict:
    spec: SleepSpec = ctx.spec
    for step in range(spec.steps):
        time.sleep(spec.seconds / max(spec.steps, 1))
        ctx.raise_if_canceled()
        ctx.progress(step + 1, spec.steps, loss=1.0 / (step + 1))
    ctx.metrics(final_loss=1.0 / max(spec.steps, 1))
    if spec.fail_with:
        raise JobFailed(spec.fail_with, "failing as the spec asked")
    return {"slept_s": spec.seconds}


@handler("test.checkpointed")
def checkpointed_job(ctx: JobContext) -> dict:
    """Resumes from the last checkpoint of an earlier attempt."""
    spec: SleepSpec = ctx.spec
    start = 0
    checkpoints = ctx.checkpoints()
    if checkpoints:
        start = json.loads(ctx.store.open(checkpoints[-1].storage_key).read())["step"]
        ctx.log(f"resuming from step {start}", resumed_from=start)
    for step in range(start, spec.steps):
        time.sleep(spec.seconds / max(spec.steps, 1))
        ctx.raise_if_canceled()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"step-{step + 1}.json"
            path.write_text(json.dumps({"step": step + 1}))
            ctx.checkpoint(path, step + 1)
        ctx.progress(step + 1, spec.steps)
    return {"resumed_from": start}


# a child that starts a grandchild, reports both pids and waits; the grandchild may ignore SIGTERM
TREE_SCRIPT = """
import os, signal, subprocess, sys, time
ignore = sys.argv[1] == "1"
grandchild = subprocess.Popen([sys.executable, "-c", (
    "import signal, time\\n"
    + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\\n" if ignore else "")
    + "print('grandchild up', flush=True)\\n"
    + "time.sleep(600)\\n")])
print(f"pids {os.getpid()} {grandchild.pid}", flush=True)
time.sleep(600)
"""


@handler("test.process_tree")
def process_tree_job(ctx: JobContext) -> dict:
    spec: TreeSpec = ctx.spec
    code = ctx.run_process([sys.executable, "-c", TREE_SCRIPT, "1" if spec.ignore_sigterm else "0"])
    return {"exit_code": code}


@handler("test.crash")
def crash_job(ctx: JobContext) -> dict:
    """Kills the process running it, every time: only the attempt limit ends it."""
    os.kill(os.getpid(), signal.SIGKILL)
    return {}
