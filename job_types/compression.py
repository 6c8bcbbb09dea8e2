"""The ``compression`` job type: passes of ``compression.spec`` run on a model version or an
uploaded model, on a worker of the ``compression`` queue.

Before a job is created: the source exists for the tenant and the passes apply to it, and the
data files exist and fit its inputs (``resolve_compression_source`` finds the source and what
is known of it, from the registry, the job that trained it, or the uploaded file's details).

A model whose first output is floating point with one value per row (a text encoder's regression
head: ``value``) is a regression model (``compression.spec.task_of_output``): its eval labels are
numbers, every stage is measured by MAE, RMSE and R² instead of accuracy, and the floor is
``max_mae_increase``; the job's metrics and report name the metric (``mae``).

A model with several inputs (a sentence encoder's ``input_ids`` and ``attention_mask``) takes
its data as an npz with one array per input (``compression.spec.named_feed``, batch inference's
rules); the worker checks the arrays again against the inputs of the graph it fetched, so a
source whose signature was not known before the job gets the same problems, as a failed job.

On the worker: fetch the source model and the data, run the passes in this process, and publish
the compressed ONNX model, its report and (when asked) a model version. Everything downloaded is
checked against its recorded sha256; weights load through safetensors (no pickle). Each pass
reports a progress event when it starts, after each training epoch and when it is measured;
cancellation is checked before every training step and between passes. A pass that takes the
model below the spec's accuracy floor fails the job with code ``accuracy_floor`` and the
numbers, and nothing is registered. Torch and the compression library are imported inside the
handler, so that the API and workers of other queues do not pay for them.

After every pass the run so far (``compression.resume``: the stages measured, their models, the
weights) is uploaded as the job's checkpoint, replacing the one before. When the worker is told
to stop, the job stops at its next training step or pass boundary and goes back to the queue;
the next attempt (also one after a worker died) resumes from the newest checkpoint it can read,
skipping the passes it holds, so its report is the one an uninterrupted run makes. A checkpoint
is recorded only once its object is wholly stored and is read with its sha256 checked: one that
does not match, or was made by other passes, is passed over with a warning.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from compression.spec import (
    CompressionSpec,
    DataSpec,
    QuantizeSpec,
    SourceFacts,
    SourceSpec,
    Task,
    ZooSpec,
    check_against_source,
    check_data_fits,
    describe_rows,
    signature_task,
    state_dict_classes,
    task_of_output,
    zoo_parameters,
)
from core.artifact_store import ChecksumMismatch
from core.broker import COMPRESSION as COMPRESSION_QUEUE
from core.model_registry import find_version
from core.models import Artifact, File, Job, ModelVersion
from core.onnx_signature import read_signature
from core.settings import Settings
from core.spec_kit import FieldProblem
from core.text_model import TextPreprocessor, feed_inputs, npz_texts_as_ids, texts_as_ids_details
from job_types.base import JobContext, JobFailed, JobPreempted, JobType
from job_types.lookups import dataset_file, model_not_found
from training.spec import BUILTIN_DETAILS, ModelSpec, TextEncoderSpec, TrainingSpec, model_fit_problems

if TYPE_CHECKING:
    from compression.data import PipelineData, Rows
    from compression.passes import ModelState
    from compression.pipeline import Hooks, PipelineResult
    from compression.resume import Progress


# --- the source, before the job is created and on the worker ------------------------------------


@dataclass(frozen=True)
class ResolvedSource:
    """A compression source found for a tenant: what is known of it, and the stored objects to
    fetch (``onnx``: the graph, when stored; ``weights``: the safetensors state dict, when the
    zoo architecture is known)."""

    facts: SourceFacts
    onnx: Artifact | File | None = None
    weights: Artifact | File | None = None
    version: ModelVersion | None = None
    model_name: str | None = None
    default_split: tuple[float, int] | None = None


def _model_spec(value: Any) -> ZooSpec | None:
    try:
        return TypeAdapter(ModelSpec).validate_python(value)
    except ValidationError:
        return None


def _io_sizes(signature: dict[str, Any]) -> tuple[int | None, int | None]:
    """(features, classes) of a model mapping ``[batch, features]`` to ``[batch, classes]``."""
    inputs, outputs = signature.get("inputs") or [], signature.get("outputs") or []

    def width(values: list[dict[str, Any]]) -> int | None:
        shape = values[0].get("shape") if len(values) == 1 else None
        return shape[1] if shape and len(shape) == 2 and shape[1] > 0 else None

    return width(inputs), width(outputs)


def _training_origin(
    session: Session, version: ModelVersion
) -> tuple[ZooSpec | None, DataSpec | None, tuple[float, int] | None]:
    """The zoo spec and training data of a version the platform made: a training job's spec,
    or what a compression job wrote into the lineage."""
    lineage = version.lineage or {}
    if isinstance(lineage.get("model"), dict):
        data = lineage.get("training_data") or {}
        dataset = DataSpec.model_validate(data["dataset"]) if data.get("dataset") else None
        split = (float(data["split"][0]), int(data["split"][1])) if data.get("split") else None
        return _model_spec(lineage["model"]), dataset, split
    job = session.get(Job, version.source_job_id) if version.source_job_id else None
    if lineage.get("kind") != "training" or job is None or job.type != "training":
        return None, None, None
    spec = TrainingSpec.model_validate(job.spec)
    if isinstance(spec.model, TextEncoderSpec):
        # compressed from its ONNX graph, which takes token ids: its texts cannot be the default data
        return None, None, None
    dataset = DataSpec(
        file_id=spec.dataset.file_id, builtin=spec.dataset.builtin, label_column=spec.dataset.label_column
    )
    fraction = spec.validation.fraction
    return spec.model, dataset, (fraction, spec.hyperparameters.seed) if fraction is not None else None


def _version_source(
    session: Session, tenant_id: str, name: str, number: int | None
) -> tuple[ResolvedSource | None, list[FieldProblem]]:
    version = find_version(session, tenant_id, name, number)
    if version is None:
        return None, [model_not_found(session, tenant_id, name, number, "/source/model", "/source/version")]
    zoo, dataset, split = _training_origin(session, version)
    weights = None
    if zoo is not None and version.source_job_id:
        weights = session.scalar(
            select(Artifact)
            .where(Artifact.job_id == version.source_job_id, Artifact.kind == "weights")
            .order_by(Artifact.id.desc())
            .limit(1)
        )
    features, classes = _io_sizes(version.signature)
    facts = SourceFacts(
        describe=f"model {name!r} version {version.version}",
        zoo=zoo if weights is not None else None,
        features=features,
        classes=classes,
        inputs=feed_inputs(version.signature),
        default_dataset=dataset,
        classes_list=(version.lineage or {}).get("classes"),
        task=signature_task(version.signature),
    )
    onnx_artifact = session.get(Artifact, version.artifact_id)
    return ResolvedSource(facts, onnx_artifact, weights, version, name, split), []


def _file_source(
    session: Session, tenant_id: str, source: SourceSpec, features: int | None
) -> tuple[ResolvedSource | None, list[FieldProblem]]:
    file = session.scalar(select(File).where(File.id == source.file_id, File.tenant_id == tenant_id))
    if file is None or file.purpose != "model":
        detail = f"no file {source.file_id!r}" if file is None else f"file {source.file_id!r} is a {file.purpose}"
        return None, [{"pointer": "/source/file_id", "detail": f"{detail}; give an uploaded .onnx or .safetensors"}]
    describe = f"file {file.filename!r}"
    if file.format == "onnx":
        if source.arch is not None:
            return None, [
                {"pointer": "/source/arch", "detail": "an .onnx file carries its graph; arch is for .safetensors"}
            ]
        signature = file.details.get("signature") or {}
        width, classes = _io_sizes(signature)
        facts = SourceFacts(describe, None, width, classes, feed_inputs(signature), task=signature_task(signature))
        return ResolvedSource(facts, onnx=file), []
    if source.arch is None:
        return None, [{"pointer": "/source/arch", "detail": f"{describe} is a state dict: give its zoo arch"}]
    classes = state_dict_classes(file.details.get("tensors") or {})
    problems = _state_dict_problems(source.arch, features, classes, file.details.get("parameters"), describe)
    if problems or classes is None:
        return None, problems
    # the graph the weights export to: logits [batch, classes], float
    task = task_of_output("FP32", [-1, classes])
    facts = SourceFacts(describe, source.arch, features, classes, task=task)
    return ResolvedSource(facts, weights=file), []


def _state_dict_problems(
    arch: ZooSpec, features: int | None, classes: int | None, parameters: int | None, describe: str
) -> list[FieldProblem]:
    if classes is None:
        return [{"pointer": "/source/arch", "detail": f"{describe} does not look like a zoo model's state dict"}]
    if features is None:
        return [{"pointer": "/eval", "detail": "the eval data must say how many features the model takes"}]
    unfit = model_fit_problems(arch, (features,))
    if unfit:
        return [{"pointer": "/source/arch", "detail": unfit[0]["detail"]}]
    expected = zoo_parameters(arch, features, classes)
    if parameters != expected:
        return [
            {
                "pointer": "/source/arch",
                "detail": f"{describe} holds {parameters} parameters; this {arch.arch} on {features} features "
                f"and {classes} classes has {expected}",
            }
        ]
    return []


def resolve_compression_source(
    session: Session, tenant_id: str, spec: CompressionSpec, eval_features: int | None
) -> tuple[ResolvedSource | None, list[FieldProblem]]:
    """The spec's source for ``tenant_id``, or the problems that say why there is none usable.
    ``eval_features`` (values per eval row) sizes a .safetensors source's input."""
    if spec.source.model is not None:
        return _version_source(session, tenant_id, spec.source.model, spec.source.version)
    return _file_source(session, tenant_id, spec.source, eval_features)


def _compression_data(
    session: Session, tenant_id: str, spec: CompressionSpec
) -> tuple[dict[str, dict[str, Any] | None], list[FieldProblem]]:
    """Stored details of every data file the spec names, by its spec pointer."""
    refs: list[tuple[str, DataSpec]] = [("/eval", spec.eval)]
    if spec.dataset is not None:
        refs.append(("/dataset", spec.dataset))
    for index, item in enumerate(spec.passes):
        if isinstance(item, QuantizeSpec) and item.calibration is not None and item.calibration.data is not None:
            refs.append((f"/passes/{index}/calibration", item.calibration.data))
    details: dict[str, dict[str, Any] | None] = {}
    problems: list[FieldProblem] = []
    for pointer, data in refs:
        if data.file_id is None:
            continue
        file, found = dataset_file(session, tenant_id, data.file_id, f"{pointer}/file_id")
        problems += found
        details[pointer] = file.details if file else None
    return details, problems


def eval_features(spec: CompressionSpec, details: dict[str, dict[str, Any] | None]) -> int | None:
    """Values per eval row, from the builtin's or the eval file's stored details."""
    found = BUILTIN_DETAILS[spec.eval.builtin] if spec.eval.builtin else details.get("/eval")
    try:
        return describe_rows(found, spec.eval.label_column)[1] if found else None
    except ValueError:
        return None


def find_compression_source(
    session: Session, tenant_id: str, spec: CompressionSpec
) -> tuple[ResolvedSource | None, list[FieldProblem]]:
    """The spec's source for ``tenant_id`` with its data files looked up (what a worker needs)."""
    details, problems = _compression_data(session, tenant_id, spec)
    resolved, found = resolve_compression_source(session, tenant_id, spec, eval_features(spec, details))
    return resolved, problems + found


def check_compression(
    session: Session, tenant_id: str, spec: CompressionSpec, settings: Settings
) -> list[FieldProblem]:
    """The checks that need the database: the source exists for the tenant and the passes apply
    to it, the data files exist and fit its inputs."""
    details, problems = _compression_data(session, tenant_id, spec)
    resolved, found = resolve_compression_source(session, tenant_id, spec, eval_features(spec, details))
    problems += found
    if resolved is None:
        return problems
    # a text model's data may hold texts: the worker tokenizes them into the ids the graph takes
    signature = served_signature(resolved)
    details = {pointer: texts_as_ids_details(d, signature) if d else d for pointer, d in details.items()}
    return problems + check_against_source(spec, resolved.facts) + check_data_fits(spec, resolved.facts, details)


def served_signature(resolved: ResolvedSource) -> dict[str, Any]:
    """The signature clients see of the source (a text model's shows its text input)."""
    if resolved.version is not None:
        return resolved.version.signature
    return (getattr(resolved.onnx, "details", None) or {}).get("signature") or {}


# --- on the worker: the source and the data ----------------------------------------------------


UNKNOWN_CLASSES = 2**31  # integer labels are taken as they are when the output width is unknown


def resolve(ctx: JobContext, spec: CompressionSpec) -> ResolvedSource:
    """The source as the API saw it; it may have gone since (a deleted file: ``bad_source``)."""
    with ctx.db() as session:
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


def source_graph(ctx: JobContext, resolved: ResolvedSource, work: Path) -> Path | None:
    """The source's ONNX graph fetched into ``work``, when one is stored."""
    return fetch(ctx, resolved.onnx, work / "source.onnx") if resolved.onnx is not None else None


def graph_io(resolved: ResolvedSource, graph: Path | None) -> tuple[list[dict[str, Any]], Task]:
    """The inputs the data must feed and the task of the first output, read from the graph itself
    when there is one (the API checked the data against the signature it had stored, if it had one)."""
    if graph is None:
        return resolved.facts.inputs, resolved.facts.task
    try:
        signature = read_signature(onnx.load(str(graph), load_external_data=False))
    except Exception as exc:  # onnx raises DecodeError and friends; the signature reader ValueErrors
        raise JobFailed("bad_source", f"the source's ONNX graph cannot be read: {exc}", pointer="/source") from exc
    return feed_inputs(signature), signature_task(signature)


def load_data(
    ctx: JobContext,
    spec: CompressionSpec,
    resolved: ResolvedSource,
    work: Path,
    inputs: list[dict[str, Any]],
    task: Task,
) -> PipelineData:
    """The rows by role; an npz that feeds named ``inputs`` is checked against them as at job
    create; labels are class indices, or numbers for a ``regression`` model."""
    from compression.data import DataError, assemble, read_rows

    cache: dict[str, Path] = {}
    preprocess = text_preprocessor(work / "source.onnx")

    def load(data: DataSpec, pointer: str) -> Rows:
        path = None
        if data.file_id is not None:
            if data.file_id not in cache:
                cache[data.file_id] = ctx.fetch_file(data.file_id, work / data.file_id)
            path = cache[data.file_id]
            if preprocess is not None:  # a text model: texts in the npz become its token ids
                path = npz_texts_as_ids(path, preprocess, work / f"{data.file_id}.ids.npz")
        return read_rows(path, data, pointer, inputs)

    facts = resolved.facts
    try:
        return assemble(
            spec,
            load,
            num_outputs=facts.classes or UNKNOWN_CLASSES,
            classes=facts.classes_list,
            default_dataset=facts.default_dataset,
            default_split=resolved.default_split,
            task=task,
        )
    except DataError as exc:
        raise JobFailed("bad_dataset", exc.detail, pointer=exc.pointer) from exc


def text_preprocessor(graph: Path) -> TextPreprocessor | None:
    """The tokenizer a text model's graph declares; None for other models or without a graph."""
    if not graph.exists():
        return None
    metadata = {prop.key: prop.value for prop in onnx.load(str(graph), load_external_data=False).metadata_props}
    return TextPreprocessor.of(metadata)


def load_source(ctx: JobContext, resolved: ResolvedSource, data: PipelineData, work: Path) -> ModelState:
    """The source as a model state (its graph already fetched by :func:`source_graph`)."""
    from compression.sources import SourceError, source_state

    onnx_path = work / "source.onnx"
    weights = fetch(ctx, resolved.weights, work / "source.safetensors") if resolved.weights is not None else None
    try:
        return source_state(resolved.facts.zoo, weights, onnx_path, data.eval_x, num_classes=resolved.facts.classes)
    except SourceError as exc:
        raise JobFailed("bad_source", str(exc), pointer="/source") from exc


# --- running -----------------------------------------------------------------------------------


def pass_options(spec: CompressionSpec) -> list[dict[str, Any]]:
    """Each pass's options as a saved progress records them (what ``Pass.describe`` gives)."""
    return [p.model_dump(mode="json") for p in spec.passes]


class Checkpoints:
    """Saves the run after every pass as the job's only checkpoint, and stops the run at its next
    safe point (a training step, a pass boundary) once the worker is stopping."""

    def __init__(self, ctx: JobContext, spec: CompressionSpec, work: Path, resumed: int = 0) -> None:
        self.ctx, self.spec, self.work = ctx, spec, work
        self.saved = resumed  # passes held by the newest checkpoint
        # polled by ``on_batch``; registering says this handler gives itself back when asked
        ctx.on_preempt(lambda: None)

    def save(self, progress: Progress) -> None:
        from compression.resume import save_progress

        ctx = self.ctx
        path = self.work / f"after-pass-{progress.done}.tar"
        try:
            save_progress(progress, pass_options(self.spec), path)
            saved = ctx.checkpoint(path, progress.done, passes_done=progress.done, stage=progress.stages[-1].name)
        except Exception as exc:  # a run that cannot be saved still runs; a later attempt redoes more
            ctx.log(f"the run after pass {progress.done} could not be saved: {exc}", level="warning")
            return
        finally:
            path.unlink(missing_ok=True)
        self.saved = progress.done
        for older in ctx.checkpoints():
            if older.id != saved.id:
                ctx.delete_artifact(older, f"the checkpoint after pass {progress.done} holds its passes")

    def on_batch(self) -> None:
        self.ctx.raise_if_canceled()
        if self.ctx.preempt_requested():
            if self.saved:
                message = f"passes 1-{self.saved} are saved; the job resumes after pass {self.saved}"
            else:
                message = "no pass had finished; the job starts over"
            raise JobPreempted(message, passes_done=self.saved)


def resume_point(ctx: JobContext, spec: CompressionSpec, work: Path) -> Progress | None:
    """The newest checkpoint of an earlier attempt that this run can go on from, or None."""
    from compression.resume import ProgressMismatch, load_progress

    recorded = ctx.checkpoint_data()
    for saved in reversed(ctx.checkpoints()):
        done = recorded.get(saved.id, {}).get("passes_done")
        if not isinstance(done, int):
            continue
        target = work / "resume" / saved.id
        target.mkdir(parents=True)
        try:
            ctx.store.download_file(saved.storage_key, target / "progress.tar", expected_sha256=saved.sha256)
            progress = load_progress(target / "progress.tar", target, pass_options(spec))
        except (ChecksumMismatch, ProgressMismatch) as exc:
            ctx.log(f"checkpoint {saved.name} is passed over: {exc}", level="warning", artifact_id=saved.id)
            continue
        except Exception as exc:  # the store lost it or is down: redoing the passes is the safe side
            ctx.log(f"checkpoint {saved.name} cannot be fetched: {exc}", level="warning", artifact_id=saved.id)
            continue
        skipped = [stage.name for stage in progress.stages[1:]]
        ctx.log(
            f"resuming after pass {progress.done}: an earlier attempt saved {', '.join(skipped)}; skipping it",
            resumed_passes=progress.done,
            skipped=skipped,
            artifact_id=saved.id,
        )
        return progress
    return None


def hooks(ctx: JobContext, spec: CompressionSpec, checkpoints: Checkpoints | None = None) -> Hooks:
    from compression.pipeline import Hooks

    total = len(spec.passes)

    def started(index: int, _: int, kind: str) -> None:
        ctx.progress(index, total, stage=f"{index + 1}. {kind}", status="running")

    def epoch(index: int, done: int, epochs: int, loss: float) -> None:
        kind = spec.passes[index].kind
        ctx.progress(index, total, stage=f"{index + 1}. {kind}", epoch=done, epochs=epochs, loss=loss)

    def finished(index: int, _: int, row: dict[str, Any]) -> None:
        ctx.progress(index + 1, total, stage=row["stage"], status="measured", **_headline(row))

    if checkpoints is None:
        return Hooks(started, finished, ctx.raise_if_canceled, epoch, ctx.log)
    return Hooks(started, finished, checkpoints.on_batch, epoch, ctx.log, checkpoints.save)


REGRESSION_KEYS = ("mae", "rmse", "r2")


def _headline(row: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy", "mean_cosine", "parameters", "nonzero_parameters", "onnx_bytes", "onnx_gzip_bytes")
    return {key: row[key] for key in keys} | {key: row[key] for key in REGRESSION_KEYS if row[key] is not None}


def run_passes(
    ctx: JobContext, spec: CompressionSpec, source: ModelState, data: PipelineData, work: Path
) -> PipelineResult:
    from compression import pipeline

    resume = resume_point(ctx, spec, work)
    if resume is not None:
        last = resume.stages[-1]
        ctx.progress(resume.done, len(spec.passes), stage=last.name, status="resumed")
    checkpoints = Checkpoints(ctx, spec, work, resume.done if resume is not None else 0)
    try:
        return pipeline.run(
            source,
            spec.passes,
            data,
            work / "stages",
            floor=spec.accuracy_floor,
            measurement=spec.measurement,
            hooks=hooks(ctx, spec, checkpoints),
            meta={"job_id": ctx.job_id, "source": spec.source.model_dump(exclude_none=True)},
            resume=resume,
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
    """The job's metrics: the last stage's numbers and its change against the source (a
    regression model's MAE, RMSE and R², and the source's MAE, where a classifier has accuracy)."""
    source, last = report["stages"][0], report["stages"][-1]
    keys = (
        *("accuracy", "mean_cosine", "min_cosine", "max_abs_error", "parameters", "nonzero_parameters"),
        *("onnx_bytes", "onnx_gzip_bytes", "latency_p50_ms", "throughput_items_per_s"),
    )
    regression = {key: last[key] for key in REGRESSION_KEYS if last[key] is not None}
    if source["mae"] is not None:
        regression["source_mae"] = source["mae"]
    return {
        **{key: last[key] for key in keys},
        "source_accuracy": source["accuracy"],
        **regression,
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
    if final.has_torch and final.zoo is not None:
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


def run_compression(ctx: JobContext) -> dict[str, Any]:
    from compression.pipeline import torch_threads

    spec: CompressionSpec = ctx.spec
    torch_threads(ctx.settings.training_threads_per_process)
    resolved = resolve(ctx, spec)
    with tempfile.TemporaryDirectory(prefix=f"maas-{ctx.job_id}-") as tmp:
        work = Path(tmp)
        graph = source_graph(ctx, resolved, work)
        data = load_data(ctx, spec, resolved, work, *graph_io(resolved, graph))
        ctx.log("; ".join(data.notes) or "data ready", train_rows=_rows(data.train_x), eval_rows=_rows(data.eval_x))
        source = load_source(ctx, resolved, data, work)
        ctx.raise_if_canceled()
        result = run_passes(ctx, spec, source, data, work)
        published = publish(ctx, spec, resolved, result, data, work)
    for saved in ctx.checkpoints():  # the run so far: all in the published model and report now
        ctx.delete_artifact(saved, "the job finished: its stages are in the report")
    return published


def _rows(x: Any) -> int | None:
    from compression.data import count_rows

    return None if x is None else count_rows(x)


COMPRESSION = JobType(
    name="compression", spec=CompressionSpec, queue=COMPRESSION_QUEUE, check=check_compression, handler=run_compression
)
