"""The product's job types: each one's spec, queue and the checks it needs before it is created.

Imported by the API (to validate) and by the workers (next to their handlers). Must stay free of
torch: the specs are plain pydantic.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core.job_types import JobType, register_job_type
from core.models import File
from core.settings import Settings
from training.spec import TrainingSpec, check_dataset_fits, check_limits


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
