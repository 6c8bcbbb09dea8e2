"""The one list of job types, and the startup check that refuses a broken one.

``BUILT_IN`` names the product's types; a deployment (or the test suite) adds its own through
``MAAS_JOB_TYPE_MODULES``: modules that export ``JOB_TYPES`` and the ``QUEUES`` those use.
:func:`load_job_types` is called when the API and every worker start; it raises
``JobTypeError`` naming the type at fault when a type has no handler, names a queue no worker
consumes, or shares its name with another.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from core.broker import QUEUES
from core.settings import Settings
from job_types.base import JobType
from job_types.batch_inference import BATCH_INFERENCE
from job_types.compression import COMPRESSION
from job_types.training import TRAINING

BUILT_IN: tuple[JobType, ...] = (TRAINING, COMPRESSION, BATCH_INFERENCE)


class JobTypeError(RuntimeError):
    """A job type the platform cannot run; raised at startup, never at the first job."""


@dataclass(frozen=True)
class JobTypes:
    """The job types of this deployment, by name, and every queue a worker may consume."""

    by_name: dict[str, JobType]
    queues: tuple[str, ...]

    def get(self, name: str) -> JobType | None:
        return self.by_name.get(name)

    def __getitem__(self, name: str) -> JobType:
        return self.by_name[name]

    def __iter__(self) -> Iterator[JobType]:
        return iter(self.by_name.values())

    def names(self) -> list[str]:
        return sorted(self.by_name)


def build(types: Iterable[JobType], queues: Sequence[str]) -> JobTypes:
    """The registry of ``types``, each checked against the ``queues`` workers consume."""
    by_name: dict[str, JobType] = {}
    for job_type in types:
        if job_type.name in by_name:
            raise JobTypeError(f"two job types are named {job_type.name!r}")
        if not (isinstance(job_type.spec, type) and issubclass(job_type.spec, BaseModel)):
            raise JobTypeError(f"job type {job_type.name!r}: its spec must be a pydantic model")
        if job_type.handler is None or not callable(job_type.handler):
            raise JobTypeError(f"job type {job_type.name!r} has no handler: no worker could run its jobs")
        if job_type.queue not in queues:
            raise JobTypeError(
                f"job type {job_type.name!r} names queue {job_type.queue!r}, which no worker consumes "
                f"(the queues are {', '.join(queues)})"
            )
        if job_type.max_attempts < 1:
            raise JobTypeError(f"job type {job_type.name!r}: max_attempts must be at least 1")
        by_name[job_type.name] = job_type
    return JobTypes(by_name, tuple(queues))


def load_job_types(settings: Settings) -> JobTypes:
    """The built-in types plus those of ``settings.job_type_modules``, checked."""
    types, queues = list(BUILT_IN), list(QUEUES)
    for name in filter(None, (part.strip() for part in settings.job_type_modules.split(","))):
        try:
            module = importlib.import_module(name)
        except ImportError as exc:
            raise JobTypeError(f"MAAS_JOB_TYPE_MODULES names {name!r}, which cannot be imported: {exc}") from exc
        if not hasattr(module, "JOB_TYPES"):
            raise JobTypeError(f"module {name!r} (MAAS_JOB_TYPE_MODULES) exports no JOB_TYPES")
        types += list(module.JOB_TYPES)
        queues += [queue for queue in getattr(module, "QUEUES", ()) if queue not in queues]
    return build(types, queues)
