"""The workers' Celery app: the broker configuration of ``core.broker``, the queues of this
deployment's job types, and the task modules a worker runs.

Start a worker with ``maas worker`` (or ``python -m workers``).
"""

from __future__ import annotations

from celery import Celery

from core.broker import create_celery
from core.settings import Settings
from job_types.registry import JobTypes
from workers import preemption

# modules whose tasks and signal handlers a worker loads (the API only sends by name)
TASK_MODULES = ("workers.jobs", "workers.webhooks", "workers.reconciler", "workers.dispatcher", "workers.predictions")


def create_worker_app(settings: Settings, job_types: JobTypes) -> Celery:
    preemption.install()  # SIGTERM: running jobs checkpoint and go back to the queue
    return create_celery(settings, queues=job_types.queues, include=TASK_MODULES)
