"""The tenant's objects a job spec refers to, looked up for the pre-create checks and the handlers:
a dataset file, a model version, and the one way to say why a model reference found nothing."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.model_registry import find_version
from core.models import File
from core.spec_kit import FieldProblem


def dataset_file(
    session: Session, tenant_id: str, file_id: str, pointer: str
) -> tuple[File | None, list[FieldProblem]]:
    """The tenant's uploaded dataset ``file_id``, or the problem at ``pointer`` saying why not."""
    file = session.scalar(select(File).where(File.id == file_id, File.tenant_id == tenant_id))
    if file is None:
        return None, [{"pointer": pointer, "detail": f"no file {file_id!r}"}]
    if file.purpose != "dataset":
        return None, [{"pointer": pointer, "detail": f"file {file_id!r} is a {file.purpose}, not a dataset"}]
    return file, []


def model_not_found(
    session: Session, tenant_id: str, name: str, version: int | None, name_pointer: str, version_pointer: str
) -> FieldProblem:
    """The problem with a model reference that found no version: no such model, no such version, or
    (no version named, where the deployed one was wanted) nothing deployed."""
    if find_version(session, tenant_id, name) is None:
        return {"pointer": name_pointer, "detail": f"no model {name!r}"}
    if version is None:
        return {"pointer": version_pointer, "detail": f"model {name!r} is not deployed: name the version to run"}
    return {"pointer": version_pointer, "detail": f"model {name!r} has no version {version}"}
