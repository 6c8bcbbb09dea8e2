"""The Celery app against a real broker and a real worker process: every queue is consumed,
and a task whose process is SIGKILLed is given back to the broker and run again
(acks_late + reject_on_worker_lost). Runs on Redis, and on RabbitMQ when configured.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest

from core.broker import QUEUES, create_celery
from core.settings import to_env
from tests.support.eventually import eventually
from tests.support.processes import start, stop

pytestmark = pytest.mark.broker


def broker_urls(services) -> list[str]:
    return [services.broker_url] + ([services.rabbitmq_url] if services.rabbitmq_url else [])


@pytest.fixture(params=["redis", "rabbitmq"])
def worker(request, services, settings, tmp_path) -> Iterator:
    """A Celery worker consuming every queue, on the broker named by the parameter."""
    url = services.broker_url if request.param == "redis" else services.rabbitmq_url
    if url is None:
        pytest.skip("MAAS_TEST_RABBITMQ_URL is not set")
    worker_settings = settings.model_copy(update={"broker_url": url})
    app = create_celery(worker_settings)
    app.control.purge()
    hostname = f"test-{secrets.token_hex(4)}@localhost"
    process = start(
        [
            "-m",
            "workers",
            "--concurrency",
            "1",
            "--include",
            "tests.support.worker_tasks",
            "--hostname",
            hostname,
        ],
        to_env(worker_settings),
        tmp_path / "worker.log",
    )
    try:
        eventually(
            lambda: bool(app.control.ping([hostname], timeout=0.5)) or process.poll() is not None,
            60,
            "the worker to answer ping",
        )
        assert process.poll() is None, (tmp_path / "worker.log").read_text()
        yield app, process, tmp_path
    finally:
        stop(process)
        app.close()


def test_every_queue_is_consumed(worker):
    app, _, tmp = worker
    for queue in QUEUES:
        app.send_task("tests.touch", args=[str(tmp / queue), queue], queue=queue)
    for queue in QUEUES:
        eventually((tmp / queue).exists, 30, f"the task sent to queue {queue}")
        assert (tmp / queue).read_text() == queue


def test_task_of_a_killed_process_is_delivered_again(worker):
    app, process, tmp = worker
    marker, done = tmp / "first-attempt", tmp / "done"
    app.send_task("tests.die_once", args=[str(marker), str(done)], queue="training")
    eventually(done.exists, 60, "the redelivered task to finish")
    assert marker.read_text() != done.read_text(), "the second attempt ran in a new process"
    assert process.poll() is None, "the worker survives the loss of its child"
    log = (tmp / "worker.log").read_text()
    assert "WorkerLostError" in log or "SIGKILL" in log or "signal 9" in log
