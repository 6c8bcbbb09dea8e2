"""Training jobs on a worker: fetch the data, run ``training.run`` under torchrun, and turn what rank 0
says (JSON lines) into progress, checkpoints, artifacts and a registered model version.

torchrun runs in its own process group, so a cancel stops every rank. A job re-run after its worker
died starts from the newest checkpoint any earlier attempt uploaded.
"""

from __future__ import annotations

import collections
import json
import os
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import onnx
from sqlalchemy import select

from core import job_catalog  # noqa: F401 - the training job type
from core.models import File
from core.onnx_signature import read_signature
from training.spec import TrainingSpec
from workers.job_runner import JobContext, JobFailed, handler

PROTOCOL = {"progress", "checkpoint", "result", "error"}
LOG_TAIL_LINES = 40
MAX_LOG_EVENTS = 500


def torchrun_command(spec: TrainingSpec, args: list[str]) -> list[str]:
    """The torchrun command line for one node of ``spec`` (multi-node runs are not split here yet)."""
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--standalone",
        "--nnodes", "1",
        "--nproc_per_node", str(spec.strategy.nproc_per_node),
        "--max-restarts", "0",
        "-m", "training.run", *args,
    ]  # fmt: skip


def child_env(threads: int) -> dict[str, str]:
    """The environment of the training processes: ours without the platform's secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


class RankZeroOutput:
    """Reads torchrun's merged output: protocol lines become job events, the rest log lines."""

    def __init__(self, ctx: JobContext, work: Path):
        self.ctx, self.work = ctx, work
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.logged = 0

    def __call__(self, line: str) -> None:
        message = _protocol_message(line)
        if message is None:
            self._log(line)
        elif message["type"] == "progress":
            values = {k: v for k, v in message.items() if k not in ("type", "step", "total_steps")}
            self.ctx.progress(message["step"], message.get("total_steps"), **values)
        elif message["type"] == "checkpoint":
            self._upload_checkpoint(Path(message["path"]), message["step"])
        elif message["type"] == "result":
            self.result = message
        else:
            self.error = message

    def _log(self, line: str) -> None:
        self.tail.append(line)
        if self.logged < MAX_LOG_EVENTS and line.strip():
            self.logged += 1
            self.ctx.log(line, level="warning" if "Error" in line or "Traceback" in line else "info")

    def _upload_checkpoint(self, directory: Path, step: int) -> None:
        archive = self.work / f"{directory.name}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(directory, arcname=directory.name)
        try:
            self.ctx.checkpoint(archive, step)
        finally:
            archive.unlink(missing_ok=True)


def _protocol_message(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and message.get("type") in PROTOCOL else None


def fetch_dataset(ctx: JobContext, file_id: str, target: Path) -> Path:
    """Download an uploaded file of the job's tenant, verifying its recorded sha256."""
    with ctx.rt.db() as session:
        file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == ctx.tenant_id))
    if file is None:
        raise JobFailed("bad_dataset", f"the file {file_id} no longer exists")
    ctx.store.download_file(file.storage_key, target, expected_sha256=file.sha256)
    return target


def restore_checkpoint(ctx: JobContext, work: Path) -> Path | None:
    """The newest checkpoint of an earlier attempt, unpacked; None on a first attempt."""
    checkpoints = ctx.checkpoints()
    if not checkpoints:
        return None
    latest = checkpoints[-1]
    archive = work / "resume.tar"
    ctx.store.download_file(latest.storage_key, archive, expected_sha256=latest.sha256)
    with tarfile.open(archive) as tar:
        tar.extractall(work / "resume", filter="data")
    archive.unlink()
    (directory,) = (work / "resume").iterdir()
    step = json.loads((directory / "meta.json").read_text()).get("step") if (directory / "meta.json").exists() else None
    ctx.log(
        f"resuming from checkpoint {directory.name} of an earlier attempt",
        resumed_from_step=step,
        artifact_id=latest.id,
    )
    return directory


def publish(ctx: JobContext, spec: TrainingSpec, result: dict[str, Any]) -> dict[str, Any]:
    """Upload the model, curves and weights; record the metrics; register the version when asked."""
    files = result["files"]
    model = ctx.artifact("model", "model.onnx", Path(files["model"]))
    curves = ctx.artifact("plot", "curves.png", Path(files["curves"]))
    weights = ctx.artifact("weights", "model.safetensors", Path(files["state_dict"]))
    metrics = result["metrics"]
    ctx.metrics(**metrics)
    published: dict[str, Any] = {
        "metrics": metrics,
        "classes": result.get("classes"),
        "artifacts": {"model": model.id, "curves": curves.id, "weights": weights.id},
        "model_version": None,
    }
    if spec.register_as:
        signature = read_signature(onnx.load(files["model"], load_external_data=False))
        lineage = {"source_job_id": ctx.job_id, "kind": "training", "arch": spec.model.arch,
                   "classes": result.get("classes")}  # fmt: skip
        version = ctx.register_model(spec.register_as, model, signature, metrics, lineage)
        published["model_version"] = {"id": version.id, "name": spec.register_as, "version": version.version}
    return published


@handler("training")
def run_training(ctx: JobContext) -> dict[str, Any]:
    spec: TrainingSpec = ctx.spec
    with tempfile.TemporaryDirectory(prefix=f"maas-{ctx.job_id}-") as tmp:
        work = Path(tmp)
        (work / "spec.json").write_text(json.dumps(ctx.raw_spec))
        args = ["--spec", str(work / "spec.json"), "--out", str(work / "out")]
        if spec.dataset.file_id:
            args += ["--data", str(fetch_dataset(ctx, spec.dataset.file_id, work / "data"))]
        if spec.validation.file_id:
            args += ["--val-data", str(fetch_dataset(ctx, spec.validation.file_id, work / "val-data"))]
        if (resume := restore_checkpoint(ctx, work)) is not None:
            args += ["--resume", str(resume)]
        output = RankZeroOutput(ctx, work)
        code = ctx.run_process(
            torchrun_command(spec, args), env=child_env(ctx.settings.training_threads_per_process), on_line=output
        )
        if output.error is not None:
            error = output.error
            raise JobFailed(
                error["code"], error["message"], **{k: v for k, v in error.items() if k in ("pointer", "rank")}
            )
        if code != 0 or output.result is None:
            raise JobFailed(
                "worker_crashed",
                f"torchrun exited with status {code} before reporting a result",
                log_tail=list(output.tail),
            )
        return publish(ctx, spec, output.result)
