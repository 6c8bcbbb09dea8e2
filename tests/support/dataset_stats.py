"""The ``dataset_stats`` job type: rows and per-feature mean and standard deviation of an uploaded
``.npz`` dataset. The README's "Add a job type" walk-through shows this module as it is."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from pydantic import Field
from sqlalchemy.orm import Session

from core.broker import INFERENCE
from core.settings import Settings
from core.spec_kit import FILE_ID_PATTERN, FieldProblem, StrictModel
from job_types.base import JobContext, JobFailed, JobType
from job_types.lookups import dataset_file


class DatasetStatsSpec(StrictModel):
    file_id: str = Field(pattern=FILE_ID_PATTERN, description="an uploaded .npz with an array X")


def check(session: Session, tenant_id: str, spec: DatasetStatsSpec, settings: Settings) -> list[FieldProblem]:
    """Runs in the API before the job is created: a problem here is a 422 pointing at the field."""
    file, problems = dataset_file(session, tenant_id, spec.file_id, "/file_id")
    if file is not None and "X" not in file.details.get("arrays", {}):
        problems.append({"pointer": "/file_id", "detail": "the file has no array X"})
    return problems


def run(ctx: JobContext) -> dict:
    """Runs on a worker of the job type's queue; what it returns is the job's result."""
    spec: DatasetStatsSpec = ctx.spec
    with tempfile.TemporaryDirectory() as tmp, np.load(ctx.fetch_file(spec.file_id, Path(tmp) / "data.npz")) as data:
        x = data["X"].reshape(len(data["X"]), -1).astype(np.float64)
    if not np.isfinite(x).all():
        raise JobFailed("bad_dataset", "X holds NaN or infinite values")
    ctx.progress(1, 1)
    ctx.metrics(rows=len(x))
    return {"rows": len(x), "mean": x.mean(axis=0).round(4).tolist(), "std": x.std(axis=0).round(4).tolist()}


DATASET_STATS = JobType(name="dataset_stats", spec=DatasetStatsSpec, queue=INFERENCE, check=check, handler=run)
JOB_TYPES = (DATASET_STATS,)
