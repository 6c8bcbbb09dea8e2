"""Job types that exist only to exercise the job runner; added by the test suite through
``MAAS_JOB_TYPE_MODULES=tests.support.job_types`` (the test settings), never shipped.

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

from core.models import File
from job_types.base import JobContext, JobFailed, JobType


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


def process_tree_job(ctx: JobContext) -> dict:
    spec: TreeSpec = ctx.spec
    code = ctx.run_process([sys.executable, "-c", TREE_SCRIPT, "1" if spec.ignore_sigterm else "0"])
    return {"exit_code": code}


def crash_job(ctx: JobContext) -> dict:
    """Kills the process running it, every time: only the attempt limit ends it."""
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def never_run(ctx: JobContext) -> dict:
    """The handler of types on ``test-unclaimed``, a queue no test worker consumes."""
    raise JobFailed("unexpected", "a job of this type was not meant to run")


QUEUES = ("test-shared", "test-recovery", "test-unclaimed")
JOB_TYPES = (
    JobType(name="test.sleep", spec=SleepSpec, queue="test-shared", handler=sleep_job),
    JobType(name="test.process_tree", spec=TreeSpec, queue="test-shared", handler=process_tree_job),
    JobType(name="test.crash", spec=Empty, queue="test-shared", handler=crash_job),
    JobType(name="test.checkpointed", spec=SleepSpec, queue="test-recovery", handler=checkpointed_job),
    JobType(name="test.unclaimed", spec=Empty, queue="test-unclaimed", handler=never_run),
    JobType(name="test.needs_file", spec=FileSpec, queue="test-unclaimed", handler=never_run, check=_file_of_tenant),
)
