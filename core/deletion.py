"""Deleting what a tenant stored: files, model versions and job artifacts.

Each ``delete_*`` works in the caller's transaction: it checks that nothing still needs the thing
(a :class:`StillInUse` names what does), removes the file or version row or marks the artifact
deleted, and returns the storage keys whose objects nothing references any more. The caller
commits first and removes those objects after (:func:`remove_objects`): a store that fails
leaves an orphan object, logged, never a row pointing at nothing.

One object can be referenced by several rows: registering an uploaded ONNX file as a version makes
an artifact with the file's own storage key, so a key is freed only when no file row and no live
(not deleted) artifact row still names it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from sqlalchemy import Text, cast, func, select, update
from sqlalchemy.orm import Session

from core.artifact_store import ArtifactStore
from core.job_states import QUEUED, RUNNING
from core.models import Artifact, Deployment, File, Job, Model, ModelReplica, ModelVersion, Prediction

log = logging.getLogger("maas.deletion")

ACTIVE = (QUEUED, RUNNING)
TENANT_REASON = "deleted by the tenant"


class StillInUse(Exception):
    """The thing is needed by something else (a 409): ``detail`` says what, ``extra`` names it."""

    def __init__(self, detail: str, **extra: Any):
        super().__init__(detail)
        self.detail, self.extra = detail, extra


class NotFound(Exception):
    """No such thing of this tenant (a 404)."""


class AlreadyDeleted(Exception):
    """The artifact's content was deleted before (a 410, as its download answers)."""

    def __init__(self, artifact: Artifact):
        super().__init__(artifact.id)
        self.artifact = artifact


def mark_artifact_deleted(session: Session, artifact_id: str, reason: str) -> None:
    """Mark an artifact deleted (its download answers 410 from now on), once: the first reason stays."""
    session.execute(
        update(Artifact)
        .where(Artifact.id == artifact_id, Artifact.deleted_at.is_(None))
        .values(deleted_at=func.now(), deleted_reason=reason)
    )


def _key_still_used(session: Session, key: str) -> bool:
    """Whether a file row or a live artifact row names the object ``key`` (after this transaction's changes)."""
    session.flush()
    if session.scalar(select(File.id).where(File.storage_key == key).limit(1)) is not None:
        return True
    live = select(Artifact.id).where(Artifact.storage_key == key, Artifact.deleted_at.is_(None)).limit(1)
    return session.scalar(live) is not None


def _active_jobs_mentioning(session: Session, tenant_id: str, text: str) -> list[Job]:
    """The tenant's queued or running jobs whose spec holds ``text`` (an id) anywhere, oldest first."""
    statement = (
        select(Job)
        .where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE), cast(Job.spec, Text).contains(text))
        .order_by(Job.id)
    )
    return list(session.scalars(statement))


def delete_file(session: Session, tenant_id: str, file_id: str) -> list[str]:
    """Remove the tenant's file row; the keys to remove from the store (none while a version uses its object)."""
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant_id).with_for_update())
    if file is None:
        raise NotFound(file_id)
    users = _active_jobs_mentioning(session, tenant_id, file_id)
    if users:
        job = users[0]
        raise StillInUse(
            f"file {file_id!r} is used by {job.status} job {job.id!r}: cancel it or wait until it ends",
            job_id=job.id,
        )
    session.delete(file)
    return [] if _key_still_used(session, file.storage_key) else [file.storage_key]


def _names_version(value: Any, name: str, number: int, version_id: str) -> bool:
    """Whether a job spec (or part of it) refers to version ``number`` of model ``name``: an object
    with the model's name (``name`` or ``model``) and ``version``, or the version's id anywhere."""
    if isinstance(value, dict):
        if name in (value.get("name"), value.get("model")) and value.get("version") == number:
            return True
        return any(_names_version(item, name, number, version_id) for item in value.values())
    if isinstance(value, list):
        return any(_names_version(item, name, number, version_id) for item in value)
    return value == version_id


def delete_version(session: Session, tenant_id: str, name: str, number: int) -> list[str]:
    """Remove version ``number`` of the tenant's model ``name``; its artifact is marked deleted
    unless another version uses it. The keys to remove from the store."""
    model = session.scalar(select(Model).where(Model.tenant_id == tenant_id, Model.name == name).with_for_update())
    version = None
    if model is not None:
        version = session.scalar(
            select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.version == number)
        )
    if model is None or version is None:
        raise NotFound(f"{name}/{number}")
    deployment = session.scalar(select(Deployment).where(Deployment.model_version_id == version.id))
    if deployment is not None:
        raise StillInUse(
            f"version {number} of model {name!r} is deployed ({deployment.id!r}): deploy another version "
            "or undeploy the model first",
            deployment_id=deployment.id,
        )
    # a version just switched away from drains on its servers (finishing requests in flight): its
    # replica rows must outlive that, and the servers report them until they unload
    draining = session.scalars(select(ModelReplica.server_id).where(ModelReplica.model_version_id == version.id)).all()
    if draining:
        raise StillInUse(
            f"version {number} of model {name!r} is still loaded on {len(draining)} model server"
            f"{'s' * (len(draining) != 1)} finishing its requests: try again in a few seconds",
            model_servers=sorted(draining),
        )
    for job in session.scalars(
        select(Job).where(Job.tenant_id == tenant_id, Job.status.in_(ACTIVE), cast(Job.spec, Text).contains(name))
    ):
        if _names_version(job.spec, name, number, version.id):
            raise StillInUse(
                f"version {number} of model {name!r} is used by {job.status} job {job.id!r}: "
                "cancel it or wait until it ends",
                job_id=job.id,
            )
    pending = session.scalar(
        select(Prediction.id).where(Prediction.model_version_id == version.id, Prediction.status.in_(ACTIVE)).limit(1)
    )
    if pending is not None:
        raise StillInUse(
            f"version {number} of model {name!r} has prediction {pending!r} still to answer",
            prediction_id=pending,
        )
    artifact = session.get_one(Artifact, version.artifact_id)
    session.delete(version)
    session.flush()
    shared = session.scalar(select(ModelVersion.id).where(ModelVersion.artifact_id == artifact.id).limit(1))
    if shared is not None or artifact.deleted_at is not None:
        return []
    mark_artifact_deleted(session, artifact.id, f"its model version was deleted: version {number} of model {name!r}")
    return [] if _key_still_used(session, artifact.storage_key) else [artifact.storage_key]


def delete_artifact(session: Session, tenant_id: str, artifact_id: str) -> list[str]:
    """Mark the tenant's artifact of a finished job deleted; the keys to remove from the store."""
    artifact = session.scalar(
        select(Artifact).where(Artifact.id == artifact_id, Artifact.tenant_id == tenant_id).with_for_update()
    )
    if artifact is None:
        raise NotFound(artifact_id)
    if artifact.deleted_at is not None:
        raise AlreadyDeleted(artifact)
    if artifact.job_id is not None:
        job = session.get_one(Job, artifact.job_id)
        if job.status in ACTIVE:
            raise StillInUse(
                f"artifact {artifact_id!r} belongs to {job.status} job {job.id!r}: delete it once the job ended",
                job_id=job.id,
            )
    row = session.execute(
        select(ModelVersion.version, Model.name)
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.artifact_id == artifact.id)
        .order_by(Model.name, ModelVersion.version)
        .limit(1)
    ).first()
    if row is not None:
        number, name = row
        raise StillInUse(
            f"artifact {artifact_id!r} is version {number} of model {name!r}: delete the version instead",
            model=name,
            version=number,
        )
    mark_artifact_deleted(session, artifact.id, TENANT_REASON)
    session.refresh(artifact)
    return [] if _key_still_used(session, artifact.storage_key) else [artifact.storage_key]


def remove_objects(store: ArtifactStore, keys: Iterable[str], what: str) -> None:
    """Remove objects whose rows are gone (committed): a failure leaves an orphan object, logged."""
    for key in keys:
        try:
            store.delete(key)
        except Exception as exc:  # the rows are already right; the object is only wasted space
            log.warning("deleting %s: the store kept the orphan object %s: %s", what, key, exc)
