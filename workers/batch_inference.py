"""Batch inference jobs on a worker of the ``inference`` queue: run one model version over a dataset
file in chunks and publish the outputs as one ``.npz`` or ``.parquet`` artifact.

The job opens its own ONNX Runtime session (the model file checked against its sha256 and warmed
up like a deployment's), so it neither needs the version deployed nor slows down the online
traffic's batches beyond sharing the cores. Which version runs is settled when the job starts
(the named one, or the one deployed then) and written to the job's result. Progress is reported
at most every ``PROGRESS_INTERVAL_S`` and after the last chunk; cancellation is checked before
every chunk. A job re-run after its worker died starts over.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from core.artifact_store import ChecksumMismatch
from core.batch_inference import BatchInferenceSpec
from core.job_catalog import BatchSources, find_batch_sources
from workers.batch_files import BadData, output_writer, read_chunks
from workers.job_runner import JobContext, JobFailed, handler
from workers.model_loader import OnnxModel, inference_threads, load_model
from workers.training import fetch_dataset

PROGRESS_INTERVAL_S = 1.0


def sources(ctx: JobContext, spec: BatchInferenceSpec) -> BatchSources:
    """The model version and the dataset as they are now (a deleted file or an undeployed model fails the job)."""
    with ctx.rt.db() as session:
        found, problems = find_batch_sources(session, ctx.tenant_id, spec)
    if found is None:
        code = "bad_dataset" if problems[0]["pointer"].startswith("/dataset") else "bad_model"
        raise JobFailed(code, problems[0]["detail"], pointer=problems[0]["pointer"])
    return found


def open_model(ctx: JobContext, found: BatchSources) -> OnnxModel:
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


def run_chunks(ctx: JobContext, spec: BatchInferenceSpec, found: BatchSources, model: OnnxModel, work: Path) -> Path:
    """Every chunk through the model into the output file; returns its path."""
    plan, fmt = found.plan, spec.output.format
    out = work / f"predictions.{fmt}"
    writer = output_writer(fmt, out, plan.rows, work)
    done, inference_s, started = 0, 0.0, time.monotonic()
    reported = float("-inf")
    data = fetch_dataset(ctx.rt, ctx.tenant_id, found.file.id, work / f"dataset.{found.file.format}")
    try:
        for feed in read_chunks(data, found.file.format, plan, spec.chunk_rows, work):
            ctx.raise_if_canceled()
            rows = next(iter(feed.values())).shape[0]
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
                ctx.progress(done, plan.rows, rows_per_s=round(done / elapsed, 1) if elapsed else None)
                reported = time.monotonic()
        writer.close()
    except BadData as exc:
        raise JobFailed("bad_dataset", str(exc), pointer="/dataset") from exc
    if done != plan.rows:
        raise JobFailed("bad_dataset", f"the file held {done} rows where {plan.rows} were recorded at upload")
    elapsed = time.monotonic() - started
    ctx.metrics(
        rows=done, seconds=round(elapsed, 3), inference_s=round(inference_s, 3), rows_per_s=round(done / elapsed, 1)
    )
    return out


@handler("batch_inference")
def run_batch_inference(ctx: JobContext) -> dict[str, Any]:
    spec: BatchInferenceSpec = ctx.spec  # type: ignore[assignment]
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
    return {
        "model": {"name": spec.model.name, "version": version.version, "model_version_id": version.id},
        "rows": found.plan.rows,
        "outputs": list(found.plan.outputs),
        "artifact": {"id": artifact.id, "name": artifact.name, "bytes": artifact.bytes, "sha256": artifact.sha256},
    }
