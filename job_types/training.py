"""The ``training`` job type: a spec of ``training.spec`` run on a worker of the ``training``
queue, by ``training.launch`` (one node: warm ranks forked after the imports and the data
loading) or torchrun (several nodes).

Before a job is created: the limits of the platform (processes per node, nodes, the precisions
its workers can run) and the dataset files' stored details against the model. On the worker:
fetch the data, run ``training.run`` on every rank, and turn what rank 0 says (JSON lines) into
progress, checkpoints (uploaded in the background, one at a time, each resumable only once its
upload is recorded), artifacts and a registered model version. The ranks run in their own
process group, so a cancel stops every rank. A job re-run after its worker died starts from
the newest checkpoint any earlier attempt uploaded. With ``nnodes > 1`` the first node hosts
torchrun's c10d rendezvous and sends every other node its share (:func:`run_node_share`)
through the queue.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import queue
import re
import shutil
import sys
import tarfile
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from sqlalchemy.orm import Session

from core.broker import TRAINING as TRAINING_QUEUE
from core.onnx_signature import read_signature
from core.ports import pick_port
from core.settings import Settings
from core.spec_kit import FieldProblem
from job_types import init_from
from job_types.base import JobContext, JobFailed, JobPreempted, JobType, NodeContext, RunContext
from job_types.checkpoint_retention import prune_checkpoints
from job_types.dataset_memory import check_worker_memory
from job_types.lookups import dataset_file
from training.spec import TrainingSpec, check_dataset_fits, check_limits, precision_problems

PROTOCOL = {"progress", "checkpoint", "result", "error", "preempted"}
LOG_TAIL_LINES = 40
MAX_LOG_EVENTS = 500


# --- before the job is created -----------------------------------------------------------------


def check_training(session: Session, tenant_id: str, spec: TrainingSpec, settings: Settings) -> list[FieldProblem]:
    problems = check_limits(spec, settings.max_nproc_per_node, settings.max_nnodes)
    problems += precision_problems(spec, settings.training_cuda)
    details = validation_details = None
    if spec.dataset.file_id:
        file, found = dataset_file(session, tenant_id, spec.dataset.file_id, "/dataset/file_id")
        problems += found
        details = file.details if file else None
    if spec.validation.file_id:
        file, found = dataset_file(session, tenant_id, spec.validation.file_id, "/validation/file_id")
        problems += found
        validation_details = file.details if file else None
    problems += init_from.resolve(session, tenant_id, spec)[1]
    if problems:
        return problems
    return check_dataset_fits(spec, details, validation_details)


# --- on the worker -----------------------------------------------------------------------------


def torchrun_command(
    spec: TrainingSpec, args: list[str], *, node_rank: int = 0, rendezvous: Rendezvous | None = None
) -> list[str]:
    """The torchrun command line of one node of ``spec``: standalone on one node, else joined
    through torchrun's c10d rendezvous hosted by node 0."""
    nodes = ["--standalone", "--nnodes", "1"]
    if rendezvous is not None:
        nodes = [
            "--nnodes", str(spec.strategy.nnodes),
            "--rdzv_backend", "c10d",
            "--rdzv_endpoint", rendezvous.endpoint,
            "--rdzv_id", rendezvous.run_id,
            "--rdzv_conf", f"is_host={int(node_rank == 0)},join_timeout={rendezvous.timeout_s}",
        ]  # fmt: skip
    return [
        sys.executable, "-m", "torch.distributed.run", *nodes,
        "--nproc_per_node", str(spec.strategy.nproc_per_node),
        "--max-restarts", "0",
        "-m", "training.run", *args,
    ]  # fmt: skip


def launch_command(spec: TrainingSpec, args: list[str]) -> list[str]:
    """The command line of a one-node job: ``training.launch``, which loads torch and the data
    once and forks warm ranks (torchrun's environment, a faster start)."""
    return [sys.executable, "-m", "training.launch", "--nproc-per-node", str(spec.strategy.nproc_per_node), *args]


@dataclass(frozen=True)
class Rendezvous:
    """Where the nodes of one attempt of a job meet."""

    endpoint: str
    run_id: str
    timeout_s: int


def child_env(threads: int) -> dict[str, str]:
    """The environment of the training processes: ours without the platform's secrets."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAAS_")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    return env


class CheckpointUploads(threading.Thread):
    """Uploads the checkpoints rank 0 announces, one at a time and in order, off the thread
    that reads the ranks' output (so neither the ranks nor their events wait for S3). A
    checkpoint becomes resumable only when its artifact row is written, after its upload:
    a job killed mid-upload resumes from the one before."""

    def __init__(self, ctx: JobContext, work: Path):
        super().__init__(name=f"checkpoint-uploads-{ctx.job_id}", daemon=True)
        self.ctx, self.work = ctx, work
        self.pending: queue.Queue[tuple[Path, int, dict[str, Any]] | None] = queue.Queue()
        self.error: BaseException | None = None
        self.uploaded: list[int] = []  # steps, in upload order

    def put(self, directory: Path, step: int, metrics: dict[str, Any]) -> None:
        if not self.is_alive() and self.ident is None:
            self.start()
        self.pending.put((directory, step, metrics))

    def close(self) -> None:
        """Wait for every announced checkpoint to be uploaded; raise the first upload error."""
        if self.ident is not None:
            self.pending.put(None)
            self.join()
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        while (item := self.pending.get()) is not None:
            if self.error is None:
                try:
                    self._upload(*item)
                except Exception as exc:  # reported by close(), in the job's thread
                    self.error = exc

    def _upload(self, directory: Path, step: int, metrics: dict[str, Any]) -> None:
        archive = self.work / f"{directory.name}.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(directory, arcname=directory.name)
        try:
            self.ctx.checkpoint(archive, step, **metrics)
        finally:
            archive.unlink(missing_ok=True)
        self.uploaded.append(step)
        shutil.rmtree(directory, ignore_errors=True)  # in the store now; the ranks' disk is not for keeping
        # the newest stays (a resume starts there); older ones beyond the spec's retention go
        prune_checkpoints(self.ctx, self.ctx.spec.checkpoints)


class RankZeroOutput:
    """Reads torchrun's merged output: protocol lines become job events, the rest log lines;
    checkpoints go to a background uploader (``close`` waits for it)."""

    def __init__(self, ctx: JobContext, work: Path):
        self.ctx, self.work = ctx, work
        self.result: dict[str, Any] | None = None
        self.error: dict[str, Any] | None = None
        self.preempted_at: int | None = None  # the step the run stopped at when asked to
        self.tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        self.logged = 0
        self.uploads = CheckpointUploads(ctx, work)

    def __call__(self, line: str) -> None:
        message = _protocol_message(line)
        if message is None:
            self._log(line)
        elif message["type"] == "progress":
            values = {k: v for k, v in message.items() if k not in ("type", "step", "total_steps")}
            self.ctx.progress(message["step"], message.get("total_steps"), **values)
        elif message["type"] == "checkpoint":
            metrics = {k: v for k, v in message.items() if k not in ("type", "path", "step")}
            self.uploads.put(Path(message["path"]), message["step"], metrics)
        elif message["type"] == "result":
            self.result = message
        elif message["type"] == "preempted":
            self.preempted_at = message["step"]
        else:
            self.error = message

    def log(self, line: str) -> None:
        """A line that is output, never protocol (another node's, or stdout when rank 0 may be elsewhere)."""
        self._log(line)

    def _log(self, line: str) -> None:
        self.tail.append(line)
        if self.logged < MAX_LOG_EVENTS and line.strip():
            self.logged += 1
            self.ctx.log(line, level="warning" if "Error" in line or "Traceback" in line else "info")

    def close(self) -> None:
        """Wait for the checkpoint uploads still running."""
        self.uploads.close()


# torchrun's summary of a rank that died from a signal: "exitcode  : -9 (pid: 123)"
_KILLED_RANK = re.compile(r"exitcode\s*:\s*-\d+")


def classify_failure(code: int, output: RankZeroOutput) -> JobFailed | None:
    """Why a run failed (None when it did not). A rank killed by a signal makes the others fail
    with whatever error its absence caused, so ``worker_crashed`` wins over the error they report."""
    if code == 0 and output.result is not None and output.error is None:
        return None
    tail = list(output.tail)
    if any(_KILLED_RANK.search(line) for line in tail):
        return JobFailed("worker_crashed", "a training process was killed", log_tail=tail)
    if output.error is not None:
        error = output.error
        details = {k: v for k, v in error.items() if k in ("pointer", "rank")}
        if error["code"] == "internal":
            details["log_tail"] = tail
        return JobFailed(error["code"], error["message"], **details)
    return JobFailed("worker_crashed", f"torchrun exited with status {code} before reporting a result", log_tail=tail)


def _protocol_message(line: str) -> dict[str, Any] | None:
    if not line.startswith("{"):
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) and message.get("type") in PROTOCOL else None


def data_args(ctx: RunContext, spec: TrainingSpec, folder: Path) -> list[str]:
    args = []
    if spec.dataset.file_id:
        args += ["--data", str(ctx.fetch_file(spec.dataset.file_id, folder / "data"))]
    if spec.validation.file_id:
        args += ["--val-data", str(ctx.fetch_file(spec.validation.file_id, folder / "val-data"))]
    return args + init_from.init_from_args(ctx, spec, folder)


def stop_file_args(ctx: RunContext, folder: Path) -> list[str]:
    """The ranks' stop file: touched when the worker is told to stop, so that they checkpoint at
    their next sync step and end (``training.run --stop-file``)."""
    stop = folder / "stop"
    ctx.on_preempt(stop.touch)
    return ["--stop-file", str(stop)]


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
        # rank 0's clock: first and last step (unix times), seconds the steps spent on checkpoints and on
        # the per-epoch validations, the export
        "timings": result.get("timings"),
    }
    if spec.register_as:
        signature = read_signature(onnx.load(files["model"], load_external_data=False))
        lineage = {"source_job_id": ctx.job_id, "kind": "training", "arch": spec.model.arch,
                   "classes": result.get("classes"), "init_from": init_from.describe(spec)}  # fmt: skip
        version = ctx.register_model(spec.register_as, model, signature, metrics, lineage)
        published["model_version"] = {"id": version.id, "name": spec.register_as, "version": version.version}
    return published


def run_training(ctx: JobContext) -> dict[str, Any]:
    spec: TrainingSpec = ctx.spec
    # every rank on this node loads the whole data: fail now rather than when one is killed
    check_worker_memory(ctx, (spec.dataset.file_id, spec.validation.file_id), spec.strategy.nproc_per_node)
    multinode = spec.strategy.nnodes > 1
    with tempfile.TemporaryDirectory(prefix=f"maas-{ctx.job_id}-") as tmp:
        local = Path(tmp)
        # with several nodes every rank must see the spec, the checkpoints and the output
        shared = ctx.settings.shared_training_dir / f"{ctx.job_id}-{ctx.attempt}" if multinode else local
        shared.mkdir(parents=True, exist_ok=True)
        try:
            (shared / "spec.json").write_text(json.dumps(ctx.raw_spec))
            common = ["--spec", str(shared / "spec.json"), "--out", str(shared / "out")]
            if (resume := restore_checkpoint(ctx, shared)) is not None:
                common += ["--resume", str(resume)]
            output = RankZeroOutput(ctx, local)
            env = child_env(ctx.settings.training_threads_per_process)
            args = common + data_args(ctx, spec, local) + stop_file_args(ctx, local)
            try:
                if multinode:
                    code = run_first_node(ctx, spec, common, args, shared, output, env)
                else:
                    code = ctx.run_process(launch_command(spec, args), env=env, on_line=output)
            except BaseException:
                with contextlib.suppress(Exception):
                    output.close()  # what was announced is still uploaded; the job's own error wins
                raise
            if output.preempted_at is not None or classify_failure(code, output) is not None:
                output.close()  # every announced checkpoint uploaded: the next attempt resumes from the newest
            if output.preempted_at is not None:
                raise JobPreempted(f"checkpointed at step {output.preempted_at}", step=output.preempted_at)
            if (failure := classify_failure(code, output)) is not None:
                raise failure
            assert output.result is not None  # classify_failure found a result
            try:
                return publish(ctx, spec, output.result)  # while the last checkpoint uploads
            finally:
                output.close()
        finally:
            if multinode:
                shutil.rmtree(shared, ignore_errors=True)


def run_first_node(
    ctx: JobContext,
    spec: TrainingSpec,
    common: list[str],
    args: list[str],
    shared: Path,
    output: RankZeroOutput,
    env: dict[str, str],
) -> int:
    """Host the rendezvous, send the other nodes' shares to the training queue, run node 0.

    Rank 0 lands on whichever node the rendezvous orders first, so protocol lines are read from
    the events file in the shared folder and every node's stdout is only logged."""
    rendezvous = Rendezvous(
        endpoint=f"{ctx.settings.training_rendezvous_host}:{pick_port()}",
        run_id=f"{ctx.job_id}-{ctx.attempt}",
        timeout_s=ctx.settings.training_rendezvous_timeout_s,
    )
    events = shared / "events.jsonl"
    events.touch()
    for node_rank in range(1, spec.strategy.nnodes):
        share = {
            "endpoint": rendezvous.endpoint,
            "run_id": rendezvous.run_id,
            "args": [*common, "--events", str(events)],
        }
        ctx.start_node(node_rank, share)
    ctx.log(f"node 0 of {spec.strategy.nnodes}: rendezvous at {rendezvous.endpoint}")
    with EventsTail(events, output):
        return ctx.run_process(
            torchrun_command(spec, [*args, "--events", str(events)], node_rank=0, rendezvous=rendezvous),
            env=env,
            on_line=output.log,
        )


class EventsTail(threading.Thread):
    """Feeds the protocol lines appended to ``path`` to ``output`` while the nodes run."""

    def __init__(self, path: Path, output: RankZeroOutput):
        super().__init__(name=f"events-{path.parent.name}", daemon=True)
        self.path, self.output, self.done = path, output, threading.Event()

    def __enter__(self) -> EventsTail:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.join()

    def run(self) -> None:
        pending = ""
        with open(self.path) as fh:
            while True:
                finishing = self.done.is_set()
                pending += fh.read()
                *lines, pending = pending.split("\n")  # a line still being written waits for its end
                for line in lines:
                    self.output(line)
                if finishing:
                    return
                self.done.wait(0.2)


def run_node_share(ctx: NodeContext, share: dict[str, Any]) -> None:
    """Another node's share of a multi-node training job: torchrun joining node 0's rendezvous.

    It reports through node 0 (rank 0's events file) and logs its output as job events; the
    worker stops it when the job stops running this attempt. A node without the memory for the
    data fails the job with ``dataset_too_large`` before starting torchrun."""
    spec: TrainingSpec = ctx.spec
    node = ctx.node_rank
    # this node's ranks load the whole data too, and its machine may be smaller than node 0's
    check_worker_memory(ctx, (spec.dataset.file_id, spec.validation.file_id), spec.strategy.nproc_per_node)
    logged = 0

    def log_line(line: str) -> None:
        nonlocal logged
        if logged < MAX_LOG_EVENTS and line.strip():
            logged += 1
            ctx.log(f"[node {node}] {line}", node=node)

    with tempfile.TemporaryDirectory(prefix=f"maas-{ctx.job_id}-node{node}-") as tmp:
        args = share["args"] + data_args(ctx, spec, Path(tmp)) + stop_file_args(ctx, Path(tmp))
        rendezvous = Rendezvous(share["endpoint"], share["run_id"], ctx.settings.training_rendezvous_timeout_s)
        code = ctx.run_process(
            torchrun_command(spec, args, node_rank=node, rendezvous=rendezvous),
            env=child_env(ctx.settings.training_threads_per_process),
            on_line=log_line,
        )
    level = "info" if code == 0 else "warning"
    ctx.log(f"node {node} finished with status {code}", level=level, node=node, exit_code=code)


TRAINING = JobType(
    name="training",
    spec=TrainingSpec,
    queue=TRAINING_QUEUE,
    check=check_training,
    handler=run_training,
    node_handler=run_node_share,
)
