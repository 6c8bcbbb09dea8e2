"""Container health checks, for images without curl: ``python -m infra.probe http URL`` or ``… worker``.

``http URL``: exit 0 when the URL answers 2xx within the timeout (the API's ``/readyz``, a model
server's ``/healthz``). ``worker``: exit 0 when the Celery worker of this container answers a ping
(its node name is ``celery@<hostname>``, Celery's default, which ``maas worker`` keeps); the
broker is the one of ``MAAS_BROKER_URL``. Anything else, a timeout included, exits 1 with the reason.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.error
import urllib.request


def http_ok(url: str, timeout_s: float) -> str | None:
    """None when ``url`` answers 2xx, else why not."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return None if 200 <= response.status < 300 else f"{url} answered {response.status}"
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except OSError as exc:
        return f"{url}: {exc}"


def worker_ok(node: str, timeout_s: float) -> str | None:
    """None when the Celery worker ``node`` answers a ping, else why not."""
    from core.broker import create_celery
    from core.settings import load_settings

    app = create_celery(load_settings())
    try:
        replies = app.control.ping(destination=[node], timeout=timeout_s)
    except Exception as exc:  # the broker itself unreachable
        return f"broker: {type(exc).__name__}: {exc}"
    finally:
        app.close()
    return None if any(node in reply for reply in replies) else f"{node} did not answer a ping in {timeout_s:g} s"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.probe", description=__doc__)
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds")
    sub = parser.add_subparsers(dest="check", required=True)
    sub.add_parser("http").add_argument("url")
    sub.add_parser("worker").add_argument("--node", default=f"celery@{socket.gethostname()}")
    args = parser.parse_args(argv)
    problem = http_ok(args.url, args.timeout) if args.check == "http" else worker_ok(args.node, args.timeout)
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
