"""A one-node launcher for ``training.run`` that starts its ranks warm: it imports torch and
the training code, reads the spec and loads the dataset once, then forks the ranks, which
inherit all of it (copy-on-write) instead of each paying for it (about 1 s of imports and
1 s of data loading per rank on a small machine, on top of torchrun's own start).

    python -m training.launch --nproc-per-node 2 --spec spec.json --out out/ [training.run options]

The ranks see what torchrun would set (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE,
GROUP_RANK, MASTER_ADDR, MASTER_PORT), so ``training.run`` runs unchanged under either, and
the run's output is the same protocol. Like ``torchrun --standalone --max-restarts 0``: when a
rank fails the others are stopped, a rank killed by a signal is summarised on stderr as
``exitcode : -N (pid: P)``, the exit status is 0 only when every rank's is, and a SIGTERM or
SIGINT to the launcher is passed on to the ranks (SIGKILL after ``STOP_GRACE_S``). A rank whose
launcher dies gets SIGKILL (``PR_SET_PDEATHSIG``). Several nodes
need torchrun's rendezvous; this launcher is for one.

Forking is safe here because nothing before the fork starts threads that the ranks rely on
(OMP_NUM_THREADS is set; torch creates its pools lazily), and the ranks create their process
group only after it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from training.data import Splits

STOP_GRACE_S = 10.0


def parse(argv: Sequence[str]) -> tuple[int, list[str]]:
    parser = argparse.ArgumentParser(prog="python -m training.launch", add_help=False)
    parser.add_argument("--nproc-per-node", type=int, required=True)
    known, rest = parser.parse_known_args(argv)
    return known.nproc_per_node, rest


def rank_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    """What torchrun sets for rank ``rank`` of a one-node run."""
    return {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
        "GROUP_RANK": "0",
        "ROLE_RANK": str(rank),
        "ROLE_WORLD_SIZE": str(world_size),
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "TORCHELASTIC_RUN_ID": f"launch-{os.getpid()}",
    }


def main(argv: Sequence[str] | None = None) -> int:
    nproc, run_argv = parse(sys.argv[1:] if argv is None else argv)
    from core.ports import pick_port
    from training import run

    args = run.parse_args(run_argv)
    splits = _prepare(args)
    port = pick_port()
    children: dict[int, int] = {}
    supervisor = Supervisor(children)
    for rank in range(nproc):
        pid = os.fork()
        if pid == 0:  # a rank: run the program as torchrun would have, never return here
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            _die_with_parent()
            os.environ.update(rank_env(rank, nproc, port))
            code = 1
            try:
                code = run.main(run_argv, splits=splits)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = rank
    return supervisor.wait()


def _prepare(args: argparse.Namespace) -> Splits | None:
    """The spec's dataset, loaded once for every rank, and its strategy's code imported; None
    when either fails (each rank then meets the error itself and reports it as usual)."""
    from training.data import load_splits
    from training.run import read_spec

    try:
        spec = read_spec(args.spec)
        importlib.import_module(f"training.strategies.{spec.strategy.kind}")
        import torch._dynamo  # noqa: F401 - DDP and FSDP import it when they wrap a model: 1.5 s a rank

        return load_splits(spec, args.data, args.val_data)
    except Exception:
        return None


class Supervisor:
    """Waits for the ranks (pid → rank); stops them all when one fails or the launcher is told
    to stop."""

    def __init__(self, children: dict[int, int]) -> None:
        self.children = children
        self.failed = False
        self.kill_at: float | None = None
        signal.signal(signal.SIGTERM, self._told_to_stop)
        signal.signal(signal.SIGINT, self._told_to_stop)

    def _told_to_stop(self, signum: int, _frame: object) -> None:
        self.failed = True
        self.stop(signal.Signals(signum))

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.kill_at is None:
            _signal_all(self.children, sig)
            self.kill_at = time.monotonic() + STOP_GRACE_S

    def wait(self) -> int:
        """The launcher's exit status, once every rank has exited."""
        while self.children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                if self.kill_at is not None and time.monotonic() > self.kill_at:
                    _signal_all(self.children, signal.SIGKILL)
                time.sleep(0.05)
                continue
            rank = self.children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            if rank is not None and code != 0:
                self.failed = True
                print(f"[training.launch] rank {rank} failed\n  exitcode  : {code} (pid: {pid})", file=sys.stderr)
                self.stop()
        return 1 if self.failed else 0


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this rank when the launcher dies (Linux; elsewhere a no-op)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG


def _signal_all(children: dict[int, int], sig: signal.Signals) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


if __name__ == "__main__":
    code = main()
    sys.stderr.flush()
    os._exit(code)
