"""Run a Celery worker: ``python -m workers [--queues training,inference] [--concurrency N]``.

Configured by MAAS_* variables; see ``core.settings``.
"""

from __future__ import annotations

import argparse

from core.logging import configure_logging
from core.settings import load_settings
from workers.celery_app import QUEUES, create_celery


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m workers", description=__doc__)
    parser.add_argument("--queues", default=",".join(QUEUES), help="comma-separated queues to consume")
    parser.add_argument("--concurrency", type=int, default=None, help="worker processes")
    parser.add_argument("--include", default="", help="extra task modules to import (comma-separated)")
    parser.add_argument("--hostname", default=None, help="worker node name (default: celery@<host>)")
    args = parser.parse_args(argv)
    settings = load_settings()
    configure_logging(settings.log_format)
    app = create_celery(settings)
    worker_args = [
        "worker",
        "--queues",
        args.queues,
        "--concurrency",
        str(args.concurrency or settings.worker_concurrency),
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
