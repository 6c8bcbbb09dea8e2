"""Run a Celery worker: ``python -m workers [--queues training,inference] [--concurrency N]``.

Configured by MAAS_* variables; see ``core.settings``. The job types are checked before the
worker starts: a type without a handler, or on a queue no worker consumes, stops it with a message.
"""

from __future__ import annotations

import argparse
import sys

from core.logging import configure_logging
from core.settings import load_settings
from job_types.registry import JobTypeError, load_job_types
from workers.celery_app import create_worker_app
from workers.concurrency import default_concurrency, visible_gpus


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--queues", default=None, help="comma-separated queues to consume (default: all)")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="jobs at once (default: one per GPU, or one, for a training-only pool; else MAAS_WORKER_CONCURRENCY)",
    )
    parser.add_argument("--include", default="", help="extra task modules to import (comma-separated)")
    parser.add_argument("--hostname", default=None, help="worker node name (default: celery@<host>)")
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_format)
    try:
        job_types = load_job_types(settings)
    except JobTypeError as exc:
        sys.exit(f"maas worker: {exc}")
    unknown = [q for q in (args.queues or "").split(",") if q and q not in job_types.queues]
    if unknown:
        sys.exit(f"maas worker: no such queue {', '.join(unknown)}; the queues are {', '.join(job_types.queues)}")
    app = create_worker_app(settings, job_types)
    queues = [q for q in (args.queues or "").split(",") if q] or list(job_types.queues)
    concurrency = args.concurrency or default_concurrency(queues, settings.worker_concurrency, visible_gpus())
    worker_args = [
        "worker",
        "--queues",
        ",".join(queues),
        "--concurrency",
        str(concurrency),
        "--loglevel",
        "INFO",
        "--without-gossip",
        "--without-mingle",
    ]
    if args.include:
        worker_args += ["--include", args.include]
    if args.hostname:
        worker_args += ["--hostname", args.hostname]
    app.worker_main(worker_args)


if __name__ == "__main__":
    main()
