"""A job artifact stored the way a worker stores one: the bytes in S3, then its row, for tests of what
the API does with artifacts (download, delete) without running a job that makes them."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from core.artifact_store import ArtifactStore
from core.ids import new_id
from core.models import Artifact
from core.settings import Settings


def add_job_artifact(
    settings: Settings, db: Callable[[], Session], tenant_id: str, job_id: str, key: str, name: str, data: bytes
) -> str:
    """Upload ``data`` under ``key`` and record it as a ``report`` artifact of ``job_id``; returns its id."""
    stored = ArtifactStore(settings).upload_chunks(key, [data])
    artifact_id = new_id("artifact")
    with db() as session:
        session.add(
            Artifact(
                id=artifact_id,
                tenant_id=tenant_id,
                job_id=job_id,
                kind="report",
                name=name,
                bytes=stored.bytes,
                sha256=stored.sha256,
                storage_key=key,
            )
        )
        session.commit()
    return artifact_id
