"""The Celery tasks that run jobs: ``workers.jobs.run(job_id)``, sent to the job type's queue, and
``workers.jobs.node(job_id, attempt, node_rank, payload)``, another node's share of a job.

Delivery is at least once; the runner's claim makes duplicates harmless, and a node's share of an
attempt that is over does nothing.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task

from core.jobs import RUN_TASK
from workers.job_runner import NODE_TASK, run_job, run_node
from workers.runtime import runtime


@shared_task(bind=True, name=RUN_TASK)
def run(self, job_id: str) -> None:
    run_job(runtime(), job_id, self.app)


@shared_task(bind=True, name=NODE_TASK)
def node(self, job_id: str, attempt: int, node_rank: int, payload: dict[str, Any]) -> None:
    run_node(runtime(), job_id, attempt, node_rank, payload, self.app)
