"""Compression jobs on a worker: fetch the source model and the data, run the passes in this
process, and publish the compressed ONNX model, its report and (when asked) a model version.

Everything downloaded is checked against its recorded sha256; weights load through
safetensors (no pickle). Each pass reports a progress event when it starts, after each
training epoch and when it is measured; cancellation is checked before every training step
and between passes. A pass that takes the model below the spec's accuracy floor fails the job
with code ``accuracy_floor`` and the numbers, and nothing is registered. A job re-run after its
worker died starts over (a run takes minutes, not hours).

Torch and the compression library are imported inside the handler, so that workers of other
queues do not pay for them at start-up.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx

from compression.spec import CompressionSpec, DataSpec
from core.artifact_store import ChecksumMismatch
from core.job_catalog import ResolvedSource, find_compression_source
from core.models import Artifact, File
from core.onnx_signature import read_signature
from workers.job_runner import JobContext, JobFailed, handler
from workers.training import fetch_dataset

if TYPE_CHECKING:
    from compression.data import PipelineData, Rows
    from compression.passes import ModelState
    from compression.pipeline import Hooks, PipelineResult

UNKNOWN_CLASSES = 2**31  # integer labels are taken as they are when the output width is unknown


# --- the source and the data -------------------------------------------------------------------


def resolve(ctx: JobContext, spec: CompressionSpec) -> ResolvedSource:
    """The source as the API saw it; it may have gone since (a deleted file: ``bad_source``)."""
    with ctx.rt.db() as session:
        resolved, problems = find_compression_source(session, ctx.tenant_id, spec)
    if resolved is None or problems:
        raise JobFailed("bad_source", problems[0]["detail"], pointer=problems[0]["pointer"])
    return resolved


def fetch(ctx: JobContext, stored: Artifact | File, target: Path) -> Path:
    try:
        ctx.store.download_file(stored.storage_key, target, expected_sha256=stored.sha256)
    except ChecksumMismatch as exc:
        raise JobFailed("checksum_mismatch", str(exc)) from exc
    return target


def load_data(ctx: JobContext, spec: CompressionSpec, resolved: ResolvedSource, work: Path) -> PipelineData:
    from compression.data import DataError, assemble, read_rows

    cache: dict[str, Path] = {}

    def load(data: DataSpec, pointer: str) -> Rows:
        path = None
        if data.file_id is not None:
            if data.file_id not in cache:
                cache[data.file_id] = fetch_dataset(ctx.rt, ctx.tenant_id, data.file_id, work / data.file_id)
            path = cache[data.file_id]
        return read_rows(path, data, pointer)

    facts = resolved.facts
    try:
        return assemble(
            spec,
            load,
            num_outputs=facts.classes or UNKNOWN_CLASSES,
            classes=facts.classes_list,
            default_dataset=facts.default_dataset,
            default_split=resolved.default_split,
        )
    except DataError as exc:
        raise JobFailed("bad_dataset", exc.detail, pointer=exc.pointer) from exc


def load_source(ctx: JobContext, resolved: ResolvedSource, data: PipelineData, work: Path) -> ModelState:
    from compression.sources import SourceError, source_state

    onnx_path = work / "source.onnx"
    if resolved.onnx is not None:
        fetch(ctx, resolved.onnx, onnx_path)
    weights = fetch(ctx, resolved.weights, work / "source.safetensors") if resolved.weights is not None else None
    try:
        return source_state(resolved.facts.zoo, weights, onnx_path, data.eval_x, num_classes=resolved.facts.classes)
    except SourceError as exc:
        raise JobFailed("bad_source", str(exc), pointer="/source") from exc


# --- running -----------------------------------------------------------------------------------


def hooks(ctx: JobContext, spec: CompressionSpec) -> Hooks:
    from compression.pipeline import Hooks

    total = len(spec.passes)

    def started(index: int, _: int, kind: str) -> None:
        ctx.progress(index, total, stage=f"{index + 1}. {kind}", status="running")

    def epoch(index: int, done: int, epochs: int, loss: float) -> None:
        kind = spec.passes[index].kind
        ctx.progress(index, total, stage=f"{index + 1}. {kind}", epoch=done, epochs=epochs, loss=loss)

    def finished(index: int, _: int, row: dict[str, Any]) -> None:
        ctx.progress(index + 1, total, stage=row["stage"], status="measured", **_headline(row))

    return Hooks(started, finished, ctx.raise_if_canceled, epoch, ctx.log)


def _headline(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "mean_cosine", "parameters", "nonzero_parameters", "onnx_bytes", "onnx_gzip_bytes")
    return {key: row[key] for key in keys}


def run_passes(
    ctx: JobContext, spec: CompressionSpec, source: ModelState, data: PipelineData, work: Path
) -> PipelineResult:
    from compression import pipeline

    try:
        return pipeline.run(
            source,
            spec.passes,
            data,
            work / "stages",
            floor=spec.accuracy_floor,
            measurement=spec.measurement,
            hooks=hooks(ctx, spec),
            meta={"job_id": ctx.job_id, "source": spec.source.model_dump(exclude_none=True)},
        )
    except pipeline.AccuracyFloorBreached as exc:
        breach = exc.breach
        raise JobFailed(
            "accuracy_floor",
            str(exc),
            stage=exc.stage,
            pass_index=exc.index,
            metric=breach.metric,
            value=breach.value,
            floor=breach.floor,
            source_value=breach.source_value,
            stages=[{k: v for k, v in row.items() if k != "details"} for row in exc.stages],
        ) from exc
    except pipeline.PassFailed as exc:
        raise JobFailed(exc.code, str(exc), pointer=exc.pointer) from exc


# --- publishing --------------------------------------------------------------------------------


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The job's metrics: the last stage's numbers and its change against the source."""
    source, last = report["stages"][0], report["stages"][-1]
    keys = ("accuracy", "mean_cosine", "min_cosine", "max_abs_error", "parameters", "nonzero_parameters")
    keys += ("onnx_bytes", "onnx_gzip_bytes", "latency_p50_ms", "throughput_items_per_s")
    return {
        **{key: last[key] for key in keys},
        "source_accuracy": source["accuracy"],
        **{key: value for key, value in report["overall"].items() if value is not None},
    }


def lineage(
    ctx: JobContext, spec: CompressionSpec, resolved: ResolvedSource, result: PipelineResult, data: PipelineData
) -> dict[str, Any]:
    """Where the new version comes from; while it is a zoo model, also its architecture and
    training data, so that it can be compressed again."""
    version = resolved.version
    if version is not None:
        parent = {"model": resolved.model_name, "version": version.version, "model_version_id": version.id}
    else:
        parent = {"file_id": spec.source.file_id}
    final = result.final
    made: dict[str, Any] = {
        "kind": "compression",
        "parent": parent,
        "passes": [p.model_dump(mode="json") for p in spec.passes],
        "source_job_id": ctx.job_id,
        "classes": resolved.facts.classes_list,
    }
    if final.has_torch:
        made["arch"] = final.zoo.arch
        made["model"] = final.zoo.model_dump(mode="json")
        made["training_data"] = {
            "dataset": data.dataset.model_dump(exclude_none=True) if data.dataset else None,
            "split": list(data.split) if data.split else None,
        }
    return made


def publish(
    ctx: JobContext,
    spec: CompressionSpec,
    resolved: ResolvedSource,
    result: PipelineResult,
    data: PipelineData,
    work: Path,
) -> dict[str, Any]:
    """Upload the model, the report (and the weights of a zoo model); register the version."""
    from compression.report import write_report

    files = write_report(result.report, work / "report")
    final = result.final
    model = ctx.artifact("model", "model.onnx", final.onnx_path)
    artifacts = {
        "model": model.id,
        "report": ctx.artifact("report", "report.json", files.json).id,
        "report_markdown": ctx.artifact("report", "report.md", files.markdown).id,
        "chart": ctx.artifact("plot", "report.png", files.chart).id,
    }
    if final.has_torch:
        weights = work / "model.safetensors"
        _save_weights(final.torch_model, weights)
        artifacts["weights"] = ctx.artifact("weights", "model.safetensors", weights).id
    metrics = summary(result.report)
    ctx.metrics(**metrics)
    published: dict[str, Any] = {
        "metrics": metrics,
        "report": {key: result.report[key] for key in ("metric", "overall", "meta")}
        | {"stages": [{k: v for k, v in row.items() if k != "details"} for row in result.report["stages"]]},
        "artifacts": artifacts,
        "model_version": None,
    }
    if spec.register_as:
        signature = read_signature(onnx.load(str(final.onnx_path), load_external_data=False))
        made = lineage(ctx, spec, resolved, result, data)
        version = ctx.register_model(spec.register_as, model, signature, metrics, made)
        published["model_version"] = {"id": version.id, "name": spec.register_as, "version": version.version}
    return published


def _save_weights(model: Any, path: Path) -> None:
    from training.export import save_state_dict

    save_state_dict(model, path, {"source": "compression"})


@handler("compression")
def run_compression(ctx: JobContext) -> dict[str, Any]:
    from compression.pipeline import torch_threads

    spec: CompressionSpec = ctx.spec  # type: ignore[assignment]
    torch_threads(ctx.settings.training_threads_per_process)
    resolved = resolve(ctx, spec)
    with tempfile.TemporaryDirectory(prefix=f"maas-{ctx.job_id}-") as tmp:
        work = Path(tmp)
        data = load_data(ctx, spec, resolved, work)
        ctx.log("; ".join(data.notes) or "data ready", train_rows=_rows(data.train_x), eval_rows=_rows(data.eval_x))
        source = load_source(ctx, resolved, data, work)
        ctx.raise_if_canceled()
        result = run_passes(ctx, spec, source, data, work)
        return publish(ctx, spec, resolved, result, data, work)


def _rows(x: Any) -> int | None:
    return None if x is None else int(x.shape[0])
