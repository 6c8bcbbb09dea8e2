"""The Celery app's configuration: the queues, at-least-once delivery. The API uses it to send;
workers (``workers.celery_app``) add the task modules they run.

The broker only carries "go and run X"; Postgres holds the truth. Tasks are
acknowledged after they finish (``acks_late``) and given back to the broker when
the process running them dies (``reject_on_worker_lost``), so a killed worker
loses nothing. Redis is the default broker; RabbitMQ (``amqp://``) works the same.
"""

from __future__ import annotations

from collections.abc import Sequence

from celery import Celery
from kombu import Queue

from core.settings import Settings

TRAINING, COMPRESSION, INFERENCE, WEBHOOKS = "training", "compression", "inference", "webhooks"
QUEUES = (TRAINING, COMPRESSION, INFERENCE, WEBHOOKS)


def create_celery(settings: Settings, *, queues: Sequence[str] = QUEUES, include: Sequence[str] = ()) -> Celery:
    """The Celery app on ``settings.broker_url``; ``include``: the task modules a worker loads
    (a sender needs none: it sends tasks by name)."""
    settings.require("broker_url")
    app = Celery("maas", broker=settings.broker_url, include=list(include), set_as_current=False)
    app.conf.update(
        task_queues=[Queue(name) for name in queues],
        task_default_queue=queues[0],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # one message at a time per process: a long job must not sit behind another one's prefetch
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Redis re-delivers an unacknowledged message after the visibility timeout; it must
        # outlast the longest job, or a running job would be handed to a second worker.
        broker_transport_options={"visibility_timeout": settings.job_max_duration_s + 3600},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        enable_utc=True,
    )
    return app
