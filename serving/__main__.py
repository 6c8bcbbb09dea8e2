"""Run a model server in a process of its own: ``python -m serving`` (or ``maas serve``).

    python -m serving                                 # the settings of MAAS_* variables, or a running `maas up`
    python -m serving --host 0.0.0.0 --port 8500      # listen elsewhere than MAAS_MODEL_SERVER_HOST/PORT

Configured by MAAS_* variables (``core.settings``): it needs the database and the S3 store, never
the broker. It loads the model versions the placer assigns it (one of the servers is the placer:
see ``serving.placer``), registers in ``model_servers`` where the APIs
find it (port 0, the default, picks a free one), and serves their inference requests. SIGTERM or
Ctrl-C stops it gracefully: its replicas are announced draining, keep serving while the APIs
re-read their routing tables, finish what is queued, then it leaves; a second signal stops it
at once. Run as many as the machine's cores allow (``MAAS_INFERENCE_SERVERS_PER_HOST``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import TYPE_CHECKING

from core.logging import configure_logging
from core.settings import MissingSetting, Settings, load_settings

if TYPE_CHECKING:
    from core.artifact_store import ArtifactStore

log = logging.getLogger("maas.model_server")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The command line options of ``python -m serving`` and ``maas serve``."""
    parser.add_argument("--host", default=None, help="listen on this address (default: MAAS_MODEL_SERVER_HOST)")
    parser.add_argument(
        "--port", type=int, default=None, help="listen on this port, 0 for a free one (default: MAAS_MODEL_SERVER_PORT)"
    )


def with_options(settings: Settings, args: argparse.Namespace) -> Settings:
    """``settings`` with the address given on the command line, if any."""
    chosen = {"model_server_host": args.host, "model_server_port": args.port}
    return settings.model_copy(update={name: value for name, value in chosen.items() if value is not None})


def run(settings: Settings) -> int:
    """Serve until SIGTERM or SIGINT, then stop gracefully: 0, or 1 when the server could not start."""
    from core.artifact_store import ArtifactStore

    settings.require("database_url")
    configure_logging(settings.log_format)
    store = ArtifactStore(settings)
    with contextlib.suppress(KeyboardInterrupt):  # a second Ctrl-C: stop at once
        return asyncio.run(_serve(settings, store))
    return 130


async def _serve(settings: Settings, store: ArtifactStore) -> int:
    from serving.server import ModelServer

    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal() -> None:
        stop_requested.set()
        for sig in STOP_SIGNALS:  # the default handlers again: a second signal ends the process
            loop.remove_signal_handler(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    server = ModelServer(settings, store)
    try:
        await server.start()
    except Exception:
        log.exception("model server %s could not start", server.id)
        with contextlib.suppress(Exception):
            await server.stop()
        return 1
    await stop_requested.wait()
    log.info("model server %s: stop requested, draining %d replicas", server.id, len(server.replicas))
    await server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_options(parser)
    args = parser.parse_args(argv)
    try:
        return run(with_options(load_settings(), args))
    except MissingSetting as exc:
        print(f"python -m serving: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
