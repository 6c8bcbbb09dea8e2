"""The registry of job types: each names its typed spec (validated by the API, handed to the
worker as is), its queue and how many attempts it gets.

Product types register themselves here when their package is imported
(``training``, ``compression``, batch inference); the worker side registers the
matching handler in ``workers.job_runner``. The test suite registers its own types.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from sqlalchemy.orm import Session

from core.settings import Settings

# checks of a valid spec against the world (files of the tenant, configured limits), before the
# job is created: problems as [{"pointer": "/dataset/file_id", "detail": ...}], pointers in the spec
Validator = Callable[[Session, str, Any, Settings], list[dict[str, str]]]


@dataclass(frozen=True)
class JobType:
    name: str
    spec: type[BaseModel]
    queue: str
    max_attempts: int = 3
    validate: Validator | None = None


JOB_TYPES: dict[str, JobType] = {}


def register_job_type(job_type: JobType) -> JobType:
    JOB_TYPES[job_type.name] = job_type
    return job_type


def get_job_type(name: str) -> JobType:
    """The registered type; KeyError when there is none."""
    return JOB_TYPES[name]
