"""Tenant quotas: what each quota is, its value for a tenant, and the capacity checks of creates.

Every quota has a name, a default in the settings (``quota_<name>``, env ``MAAS_QUOTA_<NAME>``) and
may be given another value per tenant (a ``tenant_quotas`` row, ``maas admin tenants set-quota``):

    queued_jobs            jobs queued at once, all types together
    queued_jobs_<type>     jobs of one type queued at once; no row: only queued_jobs applies
    running_jobs_<type>    jobs of one type running at once (enforced by the dispatcher, not here);
                           no row: the tenant's ``running_jobs`` row, else ``quota_running_jobs``
    deployments            deployments at once
    replicas               the sum of the deployments' max_replicas (1 each where the schema has none)
    stored_bytes           bytes in files, artifacts and checkpoints not deleted
    upload_bytes           the largest upload (max_upload_bytes still caps it for everyone)
    inference_per_min      inference calls per API key and minute (rate: ``core.rate_buckets``)
    creates_per_min        create calls (POST under /v1) per API key and minute (rate)

For the dispatcher: ``effective_quota(session, tenant_id, running_jobs(job_type))``.

A capacity check runs in the transaction that creates the thing, after
``lock_tenant(session, tenant_id)`` (a transaction-scoped advisory lock per tenant): two
concurrent creates of one tenant then count one after the other, so they cannot both take the
last slot. This module only decides and counts; callers turn ``QuotaExceeded`` into their error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from core.job_states import QUEUED
from core.models import Artifact, Deployment, File, Job, Model, TenantQuota
from core.settings import Settings, load_settings

QUEUED_JOBS = "queued_jobs"
RUNNING_JOBS = "running_jobs"
DEPLOYMENTS = "deployments"
REPLICAS = "replicas"
STORED_BYTES = "stored_bytes"
UPLOAD_BYTES = "upload_bytes"
INFERENCE_PER_MIN = "inference_per_min"
CREATES_PER_MIN = "creates_per_min"

# name → (unit, what it limits); the default is the setting quota_<name>
QUOTAS: dict[str, tuple[str, str]] = {
    QUEUED_JOBS: ("jobs", "jobs queued at once, all types together"),
    RUNNING_JOBS: ("jobs", "jobs of each type running at once (running_jobs_<type> for one type)"),
    DEPLOYMENTS: ("deployments", "deployments at once"),
    REPLICAS: ("replicas", "the deployments' max_replicas, summed"),
    STORED_BYTES: ("bytes", "bytes stored in files, artifacts and checkpoints"),
    UPLOAD_BYTES: ("bytes", "the largest file upload"),
    INFERENCE_PER_MIN: ("requests/min", "inference calls per API key (token bucket)"),
    CREATES_PER_MIN: ("requests/min", "create calls (POST /v1/...) per API key (token bucket)"),
}
# quotas that exist once per job type: <prefix>_<type>
PER_TYPE = (QUEUED_JOBS, RUNNING_JOBS)
MAX_NAME = 64


class UnknownQuota(ValueError):
    """A quota name that is none of QUOTAS nor <queued_jobs|running_jobs>_<type>."""


@dataclass(frozen=True)
class QuotaExceeded(Exception):
    """A create would take ``quota`` past ``limit``; ``used`` is the tenant's use before it."""

    quota: str
    limit: int
    used: int
    unit: str

    def __str__(self) -> str:
        return f"quota {self.quota} is {self.limit} {self.unit}; {self.used} in use"


def running_jobs(job_type: str) -> str:
    """The name of the quota on running jobs of ``job_type`` (what the dispatcher reads)."""
    return f"{RUNNING_JOBS}_{job_type}"


def queued_jobs(job_type: str) -> str:
    """The name of the quota on queued jobs of ``job_type``."""
    return f"{QUEUED_JOBS}_{job_type}"


def split(name: str) -> tuple[str, str | None]:
    """(base quota, job type or None) of a quota name; ``UnknownQuota`` when it is none."""
    if name in QUOTAS:
        return name, None
    for base in PER_TYPE:
        prefix = base + "_"
        if name.startswith(prefix) and len(name) > len(prefix) and len(name) <= MAX_NAME:
            return base, name[len(prefix) :]
    known = ", ".join([*QUOTAS, *(f"{b}_<type>" for b in PER_TYPE)])
    raise UnknownQuota(f"unknown quota {name!r}; known: {known}")


def unit(name: str) -> str:
    return QUOTAS[split(name)[0]][0]


def default_quota(settings: Settings, name: str) -> int | None:
    """The settings' value of ``name``; None for queued_jobs_<type>, which has no default of its own."""
    base, job_type = split(name)
    if base == QUEUED_JOBS and job_type is not None:
        return None
    return int(getattr(settings, "quota_" + base))


@functools.cache
def _environment_settings() -> Settings:
    return load_settings()


def overrides(session: Session, tenant_id: str) -> dict[str, int]:
    """The tenant's own quota values, by name."""
    rows = session.execute(select(TenantQuota.name, TenantQuota.value).where(TenantQuota.tenant_id == tenant_id))
    return {name: value for name, value in rows}


def resolve(name: str, own: dict[str, int], settings: Settings) -> int | None:
    """``name``'s value given a tenant's overrides ``own``; None: no limit of its own (queued_jobs_<type>)."""
    if name in own:
        return own[name]
    base, job_type = split(name)
    if base == RUNNING_JOBS and job_type is not None and RUNNING_JOBS in own:
        return own[RUNNING_JOBS]
    return default_quota(settings, name)


def effective_quota(session: Session, tenant_id: str, name: str, settings: Settings | None = None) -> int:
    """The value of quota ``name`` for ``tenant_id``: its own row, else the default from the settings.

    queued_jobs_<type> without a row answers the tenant's queued_jobs (the total bounds it anyway).
    """
    settings = settings or _environment_settings()
    own = overrides(session, tenant_id)
    value = resolve(name, own, settings)
    return value if value is not None else int(resolve(QUEUED_JOBS, own, settings) or 0)


def set_quota(session: Session, tenant_id: str, name: str, value: int | None) -> None:
    """Give ``tenant_id`` its own value of ``name`` (None: back to the default). Checks the name."""
    split(name)
    if value is not None and value < 0:
        raise ValueError("a quota is a number ≥ 0")
    session.execute(text("DELETE FROM tenant_quotas WHERE tenant_id = :t AND name = :n"), {"t": tenant_id, "n": name})
    if value is not None:
        session.add(TenantQuota(tenant_id=tenant_id, name=name, value=value))
    session.flush()


def lock_tenant(session: Session, tenant_id: str) -> None:
    """Serialise the capacity checks of one tenant until the transaction ends."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext('maas.quota'), hashtext(:t))"), {"t": tenant_id})


# ---- what a tenant uses now


def queued_job_count(session: Session, tenant_id: str, job_type: str | None = None) -> int:
    statement = select(func.count()).select_from(Job).where(Job.tenant_id == tenant_id, Job.status == QUEUED)
    if job_type is not None:
        statement = statement.where(Job.type == job_type)
    return int(session.scalar(statement) or 0)


def deployment_count(session: Session, tenant_id: str, except_model_id: str | None = None) -> int:
    statement = select(func.count()).select_from(Deployment).join(Model, Model.id == Deployment.model_id)
    statement = statement.where(Model.tenant_id == tenant_id)
    if except_model_id is not None:
        statement = statement.where(Deployment.model_id != except_model_id)
    return int(session.scalar(statement) or 0)


def replicas_per_deployment() -> str:
    """How a deployment's replicas are counted: its max_replicas once the schema has it, 1 before."""
    return "max_replicas" if hasattr(Deployment, "max_replicas") else "1 each"


def replica_count(session: Session, tenant_id: str, except_model_id: str | None = None) -> int:
    per_deployment = getattr(Deployment, "max_replicas", None)
    measure = func.coalesce(func.sum(per_deployment), 0) if per_deployment is not None else func.count()
    statement = select(measure).select_from(Deployment).join(Model, Model.id == Deployment.model_id)
    statement = statement.where(Model.tenant_id == tenant_id)
    if except_model_id is not None:
        statement = statement.where(Deployment.model_id != except_model_id)
    return int(session.scalar(statement) or 0)


def stored_bytes(session: Session, tenant_id: str) -> int:
    files = select(func.coalesce(func.sum(File.bytes), 0)).where(File.tenant_id == tenant_id)
    artifacts = select(func.coalesce(func.sum(Artifact.bytes), 0)).where(
        Artifact.tenant_id == tenant_id, Artifact.deleted_at.is_(None)
    )
    return int(session.scalar(files) or 0) + int(session.scalar(artifacts) or 0)


# ---- checks (call lock_tenant first)


def check(session: Session, tenant_id: str, name: str, used: int, adding: int, settings: Settings) -> None:
    """``QuotaExceeded`` when ``used + adding`` would pass the tenant's value of ``name``."""
    limit = effective_quota(session, tenant_id, name, settings)
    if used + adding > limit:
        raise QuotaExceeded(name, limit, used, unit(name))


def check_new_job(session: Session, tenant_id: str, job_type: str, settings: Settings) -> None:
    lock_tenant(session, tenant_id)
    check(session, tenant_id, STORED_BYTES, stored_bytes(session, tenant_id), 0, settings)  # already past it
    check(session, tenant_id, QUEUED_JOBS, queued_job_count(session, tenant_id), 1, settings)
    if queued_jobs(job_type) in overrides(session, tenant_id):
        used = queued_job_count(session, tenant_id, job_type)
        check(session, tenant_id, queued_jobs(job_type), used, 1, settings)


def check_deployment(
    session: Session, tenant_id: str, model_id: str, replicas: int, is_new: bool, settings: Settings
) -> None:
    """A deployment created (``is_new``) or changed to ask for ``replicas``."""
    lock_tenant(session, tenant_id)
    if is_new:
        check(session, tenant_id, DEPLOYMENTS, deployment_count(session, tenant_id), 1, settings)
    check(session, tenant_id, REPLICAS, replica_count(session, tenant_id, except_model_id=model_id), replicas, settings)


def check_storage(session: Session, tenant_id: str, adding: int, settings: Settings) -> None:
    lock_tenant(session, tenant_id)
    check(session, tenant_id, STORED_BYTES, stored_bytes(session, tenant_id), adding, settings)


def upload_limit(session: Session, tenant_id: str, settings: Settings) -> int:
    """The largest upload ``tenant_id`` may send now: its upload quota, the platform's cap."""
    return min(effective_quota(session, tenant_id, UPLOAD_BYTES, settings), settings.max_upload_bytes)
