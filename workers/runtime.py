"""What a worker process holds: settings, its job types, a database engine, the artifact store.

Created lazily in each process (after Celery forks its pool), never at import time.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from core.artifact_store import ArtifactStore
from core.db import make_engine, session_factory
from core.settings import Settings, load_settings
from job_types.registry import JobTypes, load_job_types


@dataclass
class WorkerRuntime:
    settings: Settings
    engine: Engine
    db: sessionmaker
    store: ArtifactStore
    job_types: JobTypes
    pid: int

    @property
    def worker_id(self) -> str:
        return f"{socket.gethostname()}:{self.pid}"


_runtime: WorkerRuntime | None = None


def runtime() -> WorkerRuntime:
    global _runtime
    if _runtime is None or _runtime.pid != os.getpid():
        if _runtime is not None:
            # inherited through fork: forget the parent's connections without closing them under it
            _runtime.engine.dispose(close=False)
        settings = load_settings()
        engine = make_engine(settings)
        _runtime = WorkerRuntime(
            settings=settings,
            engine=engine,
            db=session_factory(engine),
            store=ArtifactStore(settings),
            job_types=load_job_types(settings),
            pid=os.getpid(),
        )
    return _runtime


def holder_is_gone(worker_id: str | None) -> bool:
    """True when ``worker_id`` names a process on this host that no longer exists."""
    if not worker_id:
        return True
    host, _, pid = worker_id.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
