"""The Celery task that runs a job: ``workers.jobs.run(job_id)``, sent to the job type's queue.

Delivery is at least once; the runner's claim makes duplicates harmless.
"""

from __future__ import annotations

from celery import shared_task

from workers.job_runner import run_job
from workers.runtime import runtime


@shared_task(bind=True, name="workers.jobs.run")
def run(self, job_id: str) -> None:
    run_job(runtime(), job_id, self.app)
