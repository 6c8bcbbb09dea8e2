"""Fine-tuning from a registered version (a training spec's ``init_from``): which version,
whether its weights fit the job's model, and fetching them for the training processes.

A version can be started from when the platform made it as a zoo model (its source job is a
training job, or a compression job that kept a zoo model, as pruning and distillation do; the
job's ``weights`` artifact is the safetensors state dict) with the same architecture and the
same weight-shaping settings; everything else answers 422 naming ``/init_from``.
Another tenant's version is not found, as any other model reference. A head for another
number of classes is re-initialised in the job (``training.zoo.load_initial_weights``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from core.model_registry import find_version
from core.models import Artifact, Job
from core.spec_kit import FieldProblem
from job_types.base import JobFailed, RunContext
from job_types.lookups import model_not_found
from training.spec import AnyModel, ModelSpec, TrainingSpec

# the settings that decide the shapes of the weights; the others (dropout, freezing, max_length) may differ
WEIGHT_SHAPING = {
    "mlp": ("hidden",),
    "cnn": ("channels", "kernel_size"),
    "transformer": ("d_model", "heads", "layers", "ff_dim"),
    "text_encoder": ("pretrained",),
}


def fit_problems(source: AnyModel, model: AnyModel, describe: str) -> list[FieldProblem]:
    """Why the weights of a ``source`` model cannot start ``model`` (pure)."""
    if source.arch != model.arch:
        return [{"pointer": "/init_from", "detail": f"{describe} is a {source.arch}; this job trains a {model.arch}"}]
    differ = [name for name in WEIGHT_SHAPING[model.arch] if getattr(source, name) != getattr(model, name)]
    if differ:
        was = ", ".join(f"{name} {getattr(source, name)!r}" for name in differ)
        return [
            {
                "pointer": "/init_from",
                "detail": f"{describe} has {was}; the weights only fit a {model.arch} with the same settings",
            }
        ]
    return []


def source_model(job: Job, lineage: dict[str, Any]) -> AnyModel | None:
    """The zoo model a version's weights belong to: its training job's, or the one a compression
    job recorded in the lineage (pruned, distilled: still a zoo model); None when there is none."""
    try:
        if job.type == "training" and lineage.get("kind") == "training":
            return TrainingSpec.model_validate(job.spec).model
        if job.type == "compression" and isinstance(lineage.get("model"), dict):
            return TypeAdapter(ModelSpec).validate_python(lineage["model"])
    except ValidationError:  # a spec of an older schema this version of the platform no longer reads
        return None
    return None


def resolve(session: Session, tenant_id: str, spec: TrainingSpec) -> tuple[Artifact | None, list[FieldProblem]]:
    """The weights artifact ``spec.init_from`` names for ``tenant_id``, or why there is none."""
    ref = spec.init_from
    if ref is None:
        return None, []
    version = find_version(session, tenant_id, ref.model, ref.version)
    if version is None:
        return None, [
            model_not_found(session, tenant_id, ref.model, ref.version, "/init_from/model", "/init_from/version")
        ]
    describe = f"model {ref.model!r} version {ref.version}"
    job = session.get(Job, version.source_job_id) if version.source_job_id else None
    source = source_model(job, version.lineage or {}) if job is not None else None
    if source is None:
        detail = f"{describe} has no zoo weights to start from (it was not made by a training job, or by a compression "
        "job that kept a zoo model)"
        return None, [{"pointer": "/init_from/version", "detail": detail}]
    problems = fit_problems(source, spec.model, describe)
    if problems:
        return None, problems
    weights = session.scalar(
        select(Artifact)
        .where(Artifact.job_id == version.source_job_id, Artifact.kind == "weights")
        .order_by(Artifact.id.desc())
        .limit(1)
    )
    if weights is None:
        return None, [{"pointer": "/init_from/version", "detail": f"the weights of {describe} are gone"}]
    return weights, []


def init_from_args(ctx: RunContext, spec: TrainingSpec, folder: Path) -> list[str]:
    """``--init-from`` and the weights fetched (sha256 checked) into ``folder``; [] without init_from."""
    if spec.init_from is None:
        return []
    with ctx.db() as session:
        weights, problems = resolve(session, ctx.tenant_id, spec)
        key, sha256 = (weights.storage_key, weights.sha256) if weights is not None else ("", "")
    if weights is None:
        raise JobFailed("bad_init", problems[0]["detail"], pointer=problems[0]["pointer"])
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "init.safetensors"
    ctx.store.download_file(key, target, expected_sha256=sha256)
    return ["--init-from", str(target)]


def describe(spec: TrainingSpec) -> dict[str, Any] | None:
    """What the lineage of a version made by ``spec`` records of where it started."""
    return None if spec.init_from is None else spec.init_from.model_dump()
