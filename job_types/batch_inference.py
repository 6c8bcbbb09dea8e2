"""The ``batch_inference`` job type: one model version over a dataset file in chunks, on a worker
of the ``inference`` queue, its outputs published as one ``.npz`` or ``.parquet`` artifact.

Before a job is created: the version exists (the named one, or one is deployed), the dataset
file exists, and :func:`job_types.batch_spec.plan_inputs` maps it onto the model's inputs.
On the worker the job opens its own ONNX Runtime session (the model file checked against its
sha256 and warmed up like a deployment's), so it neither needs the version deployed nor slows
down the online traffic's batches beyond sharing the cores. Which version runs is settled when
the job starts (the named one, or the one deployed then) and written to the job's result.
Progress is reported at most every ``PROGRESS_INTERVAL_S`` and after the last chunk;
cancellation is checked before every chunk. When the worker is told to stop, the outputs so far
are saved as a checkpoint before the next chunk and the job goes back to the queue; the next
attempt carries them over and starts at the first chunk not written (each chunk is run and
written once). A job re-run after its worker died starts over.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.artifact_store import ChecksumMismatch
from core.broker import INFERENCE
from core.model_registry import find_version
from core.models import Artifact, Deployment, File, Model, ModelVersion
from core.settings import Settings
from core.spec_kit import FieldProblem
from job_types.base import JobContext, JobFailed, JobPreempted, JobType
from job_types.batch_files import BadData, OutputWriter, carry_over, output_writer, read_chunks
from job_types.batch_spec import BatchInferenceSpec, FeedPlan, PlanError, plan_inputs
from job_types.lookups import dataset_file, model_not_found

if TYPE_CHECKING:
    from core.onnx_model import OnnxModel

# --- what the job reads, before it is created and on the worker ---------------------------------


@dataclass(frozen=True)
class BatchSources:
    """What a batch inference job reads: the model version, its ONNX artifact, the dataset file and the plan."""

    version: ModelVersion
    model_artifact: Artifact
    file: File
    plan: FeedPlan


def find_batch_sources(
    session: Session, tenant_id: str, spec: BatchInferenceSpec
) -> tuple[BatchSources | None, list[FieldProblem]]:
    """The version to run (the named one, or the one deployed now), the dataset and how it feeds the model."""
    ref = spec.model
    if ref.version is None:
        version = session.scalar(
            select(ModelVersion)
            .join(Deployment, Deployment.model_version_id == ModelVersion.id)
            .join(Model, Model.id == Deployment.model_id)
            .where(Model.tenant_id == tenant_id, Model.name == ref.name)
        )
    else:
        version = find_version(session, tenant_id, ref.name, ref.version)
    problems: list[FieldProblem] = []
    if version is None:
        problems.append(model_not_found(session, tenant_id, ref.name, ref.version, "/model/name", "/model/version"))
    file, found = dataset_file(session, tenant_id, spec.dataset.file_id, "/dataset/file_id")
    problems += found
    if version is None or file is None:
        return None, problems
    try:
        plan = plan_inputs(version.signature, file.format, file.details, spec)
    except PlanError as exc:
        return None, [exc.problem]
    return BatchSources(version, session.get_one(Artifact, version.artifact_id), file, plan), []


def check_batch_inference(
    session: Session, tenant_id: str, spec: BatchInferenceSpec, settings: Settings
) -> list[FieldProblem]:
    return find_batch_sources(session, tenant_id, spec)[1]


# --- on the worker -----------------------------------------------------------------------------


PROGRESS_INTERVAL_S = 1.0


def sources(ctx: JobContext, spec: BatchInferenceSpec) -> BatchSources:
    """The model version and the dataset as they are now (a deleted file or an undeployed model fails the job)."""
    with ctx.db() as session:
        found, problems = find_batch_sources(session, ctx.tenant_id, spec)
    if found is None:
        code = "bad_dataset" if problems[0]["pointer"].startswith("/dataset") else "bad_model"
        raise JobFailed(code, problems[0]["detail"], pointer=problems[0]["pointer"])
    return found


def open_model(ctx: JobContext, found: BatchSources) -> OnnxModel:
    from core.onnx_model import inference_threads, load_model  # ONNX Runtime: not in the API process

    artifact = found.model_artifact
    try:
        return load_model(
            ctx.store,
            storage_key=artifact.storage_key,
            sha256=artifact.sha256,
            signature=found.version.signature,
            threads=inference_threads(ctx.settings),
            warmup_rows=1,
        )
    except ChecksumMismatch as exc:
        raise JobFailed("checksum_mismatch", str(exc)) from exc
    except Exception as exc:
        raise JobFailed("bad_model", f"the model cannot be opened: {exc}") from exc


def resume_rows(ctx: JobContext, spec: BatchInferenceSpec, writer: OutputWriter, work: Path) -> int:
    """Carry an earlier attempt's saved outputs into ``writer``; the rows they hold (0: none)."""
    checkpoints = ctx.checkpoints()
    if not checkpoints:
        return 0
    saved = checkpoints[-1]
    rows = int(ctx.checkpoint_data().get(saved.id, {}).get("step", 0))
    partial = work / f"saved.{spec.output.format}"
    ctx.store.download_file(saved.storage_key, partial, expected_sha256=saved.sha256)
    carry_over(writer, partial, spec.output.format, rows)
    partial.unlink()
    ctx.log(f"resuming at row {rows + 1}: an earlier attempt saved the outputs before it", resumed_rows=rows)
    return rows


def save_and_stop(ctx: JobContext, writer: OutputWriter, out: Path, done: int) -> None:
    """The worker is stopping: the outputs of the first ``done`` rows become a checkpoint."""
    if done:
        writer.close()
        saved = out.rename(out.with_name(f"partial-{done}{out.suffix}"))
        ctx.checkpoint(saved, done, rows=done)
    raise JobPreempted(f"the outputs of the first {done} rows are saved", rows=done)


def run_chunks(ctx: JobContext, spec: BatchInferenceSpec, found: BatchSources, model: OnnxModel, work: Path) -> Path:
    """Every chunk through the model into the output file; returns its path."""
    plan, fmt = found.plan, spec.output.format
    out = work / f"predictions.{fmt}"
    writer = output_writer(fmt, out, plan.rows, work)
    resumed = done = resume_rows(ctx, spec, writer, work)
    inference_s, started = 0.0, time.monotonic()
    reported = float("-inf")
    data = ctx.fetch_file(found.file.id, work / f"dataset.{found.file.format}")
    position = 0
    try:
        for feed in read_chunks(data, found.file.format, plan, spec.chunk_rows, work):
            rows = next(iter(feed.values())).shape[0]
            position += rows
            if position <= resumed:  # written by an earlier attempt
                continue
            if ctx.preempt_requested():
                save_and_stop(ctx, writer, out, done)
            ctx.raise_if_canceled()
            before = time.perf_counter()
            try:
                outputs = model.run(feed)
            except Exception as exc:
                raise JobFailed("inference_failed", f"rows {done + 1}-{done + rows}: {exc}") from exc
            inference_s += time.perf_counter() - before
            writer.write({name: outputs[name] for name in plan.outputs})
            done += rows
            if time.monotonic() - reported >= PROGRESS_INTERVAL_S or done == plan.rows:
                elapsed = time.monotonic() - started
                ran = done - resumed
                ctx.progress(done, plan.rows, rows_per_s=round(ran / elapsed, 1) if elapsed else None)
                reported = time.monotonic()
        writer.close()
    except BadData as exc:
        raise JobFailed("bad_dataset", str(exc), pointer="/dataset") from exc
    if done != plan.rows:
        raise JobFailed("bad_dataset", f"the file held {done} rows where {plan.rows} were recorded at upload")
    elapsed = time.monotonic() - started
    ctx.metrics(
        rows=done,
        resumed_rows=resumed,
        seconds=round(elapsed, 3),
        inference_s=round(inference_s, 3),
        rows_per_s=round((done - resumed) / elapsed, 1),
    )
    return out


def run_batch_inference(ctx: JobContext) -> dict[str, Any]:
    spec: BatchInferenceSpec = ctx.spec
    found = sources(ctx, spec)
    version = found.version
    ctx.log(
        f"running {spec.model.name} version {version.version} over {found.plan.rows} rows "
        f"in chunks of {spec.chunk_rows}",
        model_version_id=version.id,
    )
    with tempfile.TemporaryDirectory(prefix=f"maas-{ctx.job_id}-") as tmp:
        work = Path(tmp)
        model = open_model(ctx, found)
        out = run_chunks(ctx, spec, found, model, work)
        artifact = ctx.artifact("predictions", out.name, out, rows=found.plan.rows, format=spec.output.format)
    for saved in ctx.checkpoints():  # earlier attempts' partial outputs: all in the artifact now
        ctx.delete_artifact(saved, "the job finished: its outputs are in the predictions artifact")
    return {
        "model": {"name": spec.model.name, "version": version.version, "model_version_id": version.id},
        "rows": found.plan.rows,
        "outputs": list(found.plan.outputs),
        "artifact": {"id": artifact.id, "name": artifact.name, "bytes": artifact.bytes, "sha256": artifact.sha256},
    }


BATCH_INFERENCE = JobType(
    name="batch_inference",
    spec=BatchInferenceSpec,
    queue=INFERENCE,
    check=check_batch_inference,
    handler=run_batch_inference,
)
