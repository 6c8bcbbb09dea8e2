"""The model registry: named models and their numbered, immutable versions.

A version points at one ONNX artifact (sha256 recorded, verified by whoever loads
it) and carries its input/output signature read from the graph, its metrics and
its lineage (the job or file it came from, the parent version and the passes that
made it). Versions are numbered 1, 2, 3… per model, under a row lock, so two jobs
registering at once get distinct numbers; the model keeps the highest number it ever gave
(``last_version``), so a deleted version's number is never given to another.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.ids import new_id
from core.models import Artifact, Model, ModelVersion
from core.spec_kit import MODEL_NAME_PATTERN

_NAME = re.compile(MODEL_NAME_PATTERN)


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def get_or_create_model(session: Session, tenant_id: str, name: str) -> Model:
    session.execute(insert(Model).values(id=new_id("model"), tenant_id=tenant_id, name=name).on_conflict_do_nothing())
    return session.scalars(
        select(Model).where(Model.tenant_id == tenant_id, Model.name == name).with_for_update()
    ).one()


def register_version(
    session: Session,
    *,
    tenant_id: str,
    name: str,
    artifact: Artifact,
    signature: dict[str, Any],
    metrics: dict[str, Any] | None = None,
    lineage: dict[str, Any] | None = None,
    source_job_id: str | None = None,
) -> ModelVersion:
    """Add the next version of model ``name`` (created when new) in the caller's transaction."""
    model = get_or_create_model(session, tenant_id, name)
    latest = session.scalar(select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id))
    number = max(model.last_version, latest or 0) + 1
    model.last_version = number
    version = ModelVersion(
        id=new_id("model_version"),
        model_id=model.id,
        version=number,
        artifact_id=artifact.id,
        sha256=artifact.sha256,
        signature=signature,
        metrics=metrics or {},
        lineage=lineage or {},
        source_job_id=source_job_id,
    )
    session.add(version)
    session.flush()
    return version


def find_version(session: Session, tenant_id: str, name: str, version: int | None = None) -> ModelVersion | None:
    """A version of the tenant's model (the latest when ``version`` is None)."""
    statement = (
        select(ModelVersion)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(Model.tenant_id == tenant_id, Model.name == name)
    )
    if version is None:
        statement = statement.order_by(ModelVersion.version.desc()).limit(1)
    else:
        statement = statement.where(ModelVersion.version == version)
    return session.scalar(statement)
