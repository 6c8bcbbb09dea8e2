"""The product's job types: each one's spec, queue and the checks it needs before it is created.

Imported by the API (to validate) and by the workers (next to their handlers). Must stay free of
torch: the specs are plain pydantic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from compression.spec import (
    CompressionSpec,
    DataSpec,
    QuantizeSpec,
    SourceFacts,
    SourceSpec,
    ZooSpec,
    check_against_source,
    check_data_fits,
    describe_rows,
    state_dict_classes,
    zoo_parameters,
)
from core.batch_inference import BatchInferenceSpec, Plan, PlanError, plan_inputs
from core.job_types import JobType, register_job_type
from core.models import Artifact, Deployment, File, Job, Model, ModelVersion
from core.registry import find_version
from core.settings import Settings
from training.spec import (
    BUILTIN_DETAILS,
    ModelSpec,
    TrainingSpec,
    check_dataset_fits,
    check_limits,
    model_fit_problems,
)


def _dataset_file(session: Session, tenant_id: str, file_id: str, pointer: str) -> tuple[File | None, list[dict]]:
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant_id))
    if file is None:
        return None, [{"pointer": pointer, "detail": f"no file {file_id!r}"}]
    if file.purpose != "dataset":
        return None, [{"pointer": pointer, "detail": f"file {file_id!r} is a {file.purpose}, not a dataset"}]
    return file, []


def validate_training(session: Session, tenant_id: str, spec: TrainingSpec, settings: Settings) -> list[dict[str, Any]]:
    problems = check_limits(spec, settings.max_nproc_per_node, settings.max_nnodes)
    details = validation_details = None
    if spec.dataset.file_id:
        file, found = _dataset_file(session, tenant_id, spec.dataset.file_id, "/dataset/file_id")
        problems += found
        details = file.details if file else None
    if spec.validation.file_id:
        file, found = _dataset_file(session, tenant_id, spec.validation.file_id, "/validation/file_id")
        problems += found
        validation_details = file.details if file else None
    if problems:
        return problems
    return check_dataset_fits(spec, details, validation_details)


TRAINING = register_job_type(JobType(name="training", spec=TrainingSpec, queue="training", validate=validate_training))


# --- compression -------------------------------------------------------------------------------


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
        split = tuple(data["split"]) if data.get("split") else None
        return _model_spec(lineage["model"]), dataset, split  # type: ignore[return-value]
    job = session.get(Job, version.source_job_id) if version.source_job_id else None
    if lineage.get("kind") != "training" or job is None or job.type != "training":
        return None, None, None
    spec = TrainingSpec.model_validate(job.spec)
    dataset = DataSpec(
        file_id=spec.dataset.file_id, builtin=spec.dataset.builtin, label_column=spec.dataset.label_column
    )
    fraction = spec.validation.fraction
    return spec.model, dataset, (fraction, spec.hyperparameters.seed) if fraction is not None else None


def _not_found(
    session: Session, tenant_id: str, name: str, version: int | None, name_pointer: str, version_pointer: str
) -> dict[str, str]:
    """The problem with a model reference that found no version: no such model, no such version, or
    (no version named, where the deployed one was wanted) nothing deployed."""
    if find_version(session, tenant_id, name) is None:
        return {"pointer": name_pointer, "detail": f"no model {name!r}"}
    if version is None:
        return {"pointer": version_pointer, "detail": f"model {name!r} is not deployed: name the version to run"}
    return {"pointer": version_pointer, "detail": f"model {name!r} has no version {version}"}


def _version_source(session: Session, tenant_id: str, source: SourceSpec) -> tuple[ResolvedSource | None, list]:
    version = find_version(session, tenant_id, source.model, source.version)
    if version is None:
        return None, [_not_found(session, tenant_id, source.model, source.version, "/source/model", "/source/version")]
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
        describe=f"model {source.model!r} version {version.version}",
        zoo=zoo if weights is not None else None,
        features=features,
        classes=classes,
        inputs=version.signature.get("inputs") or [],
        default_dataset=dataset,
        classes_list=(version.lineage or {}).get("classes"),
    )
    onnx_artifact = session.get(Artifact, version.artifact_id)
    return ResolvedSource(facts, onnx_artifact, weights, version, source.model, split), []


def _file_source(
    session: Session, tenant_id: str, source: SourceSpec, features: int | None
) -> tuple[ResolvedSource | None, list]:
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
        facts = SourceFacts(describe, None, width, classes, signature.get("inputs") or [])
        return ResolvedSource(facts, onnx=file), []
    if source.arch is None:
        return None, [{"pointer": "/source/arch", "detail": f"{describe} is a state dict: give its zoo arch"}]
    classes = state_dict_classes(file.details.get("tensors") or {})
    problems = _state_dict_problems(source.arch, features, classes, file.details.get("parameters"), describe)
    if problems:
        return None, problems
    facts = SourceFacts(describe, source.arch, features, classes)
    return ResolvedSource(facts, weights=file), []


def _state_dict_problems(
    arch: ZooSpec, features: int | None, classes: int | None, parameters: int | None, describe: str
) -> list[dict[str, str]]:
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
) -> tuple[ResolvedSource | None, list[dict[str, str]]]:
    """The spec's source for ``tenant_id``, or the problems that say why there is none usable.
    ``eval_features`` (values per eval row) sizes a .safetensors source's input."""
    if spec.source.model is not None:
        return _version_source(session, tenant_id, spec.source)
    return _file_source(session, tenant_id, spec.source, eval_features)


def _compression_data(
    session: Session, tenant_id: str, spec: CompressionSpec
) -> tuple[dict[str, dict[str, Any] | None], list[dict[str, str]]]:
    """Stored details of every data file the spec names, by its spec pointer."""
    refs: list[tuple[str, DataSpec]] = [("/eval", spec.eval)]
    if spec.dataset is not None:
        refs.append(("/dataset", spec.dataset))
    for index, item in enumerate(spec.passes):
        if isinstance(item, QuantizeSpec) and item.calibration is not None and item.calibration.data is not None:
            refs.append((f"/passes/{index}/calibration", item.calibration.data))
    details: dict[str, dict[str, Any] | None] = {}
    problems: list[dict[str, str]] = []
    for pointer, data in refs:
        if data.file_id is None:
            continue
        file, found = _dataset_file(session, tenant_id, data.file_id, f"{pointer}/file_id")
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
) -> tuple[ResolvedSource | None, list[dict[str, str]]]:
    """The spec's source for ``tenant_id`` with its data files looked up (what a worker needs)."""
    details, problems = _compression_data(session, tenant_id, spec)
    resolved, found = resolve_compression_source(session, tenant_id, spec, eval_features(spec, details))
    return resolved, problems + found


def validate_compression(
    session: Session, tenant_id: str, spec: CompressionSpec, settings: Settings
) -> list[dict[str, Any]]:
    """The checks that need the database: the source exists for the tenant and the passes apply
    to it, the data files exist and fit its inputs."""
    details, problems = _compression_data(session, tenant_id, spec)
    resolved, found = resolve_compression_source(session, tenant_id, spec, eval_features(spec, details))
    problems += found
    if resolved is None:
        return problems
    return problems + check_against_source(spec, resolved.facts) + check_data_fits(spec, resolved.facts, details)


COMPRESSION = register_job_type(
    JobType(name="compression", spec=CompressionSpec, queue="compression", validate=validate_compression)
)


# --- batch inference ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchSources:
    """What a batch inference job reads: the model version, its ONNX artifact, the dataset file and the plan."""

    version: ModelVersion
    model_artifact: Artifact
    file: File
    plan: Plan


def find_batch_sources(
    session: Session, tenant_id: str, spec: BatchInferenceSpec
) -> tuple[BatchSources | None, list[dict[str, str]]]:
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
    problems: list[dict[str, str]] = []
    if version is None:
        problems.append(_not_found(session, tenant_id, ref.name, ref.version, "/model/name", "/model/version"))
    file, found = _dataset_file(session, tenant_id, spec.dataset.file_id, "/dataset/file_id")
    problems += found
    if version is None or file is None:
        return None, problems
    try:
        plan = plan_inputs(version.signature, file.format, file.details, spec)
    except PlanError as exc:
        return None, [{"pointer": exc.pointer, "detail": exc.detail}]
    return BatchSources(version, session.get(Artifact, version.artifact_id), file, plan), []


def validate_batch_inference(
    session: Session, tenant_id: str, spec: BatchInferenceSpec, settings: Settings
) -> list[dict[str, Any]]:
    return find_batch_sources(session, tenant_id, spec)[1]


BATCH_INFERENCE = register_job_type(
    JobType(name="batch_inference", spec=BatchInferenceSpec, queue="inference", validate=validate_batch_inference)
)
