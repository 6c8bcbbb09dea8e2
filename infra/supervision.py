"""When ``maas up`` restarts a piece that died: exponential backoff, forgiven after a healthy run.

Pure logic (no processes, no clock of its own) so that it can be tested directly; the stack
(``infra.local_stack``) asks it when to restart and tells it when a piece started and died.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FIRST_DELAY_S = 1.0
MAX_DELAY_S = 30.0
# a piece that ran this long before dying was healthy: its next restart starts the backoff over
HEALTHY_AFTER_S = 60.0


@dataclass
class Backoff:
    """The restart schedule of one piece of the stack."""

    first_s: float = FIRST_DELAY_S
    max_s: float = MAX_DELAY_S
    healthy_after_s: float = HEALTHY_AFTER_S
    failures: int = 0
    started_at: float | None = None
    restart_at: float | None = field(default=None)

    def started(self, now: float) -> None:
        self.started_at, self.restart_at = now, None

    def died(self, now: float) -> float:
        """Record a death at ``now``; the delay before the restart (also kept as ``restart_at``)."""
        if self.started_at is not None and now - self.started_at >= self.healthy_after_s:
            self.failures = 0
        delay = min(self.first_s * 2**self.failures, self.max_s)
        self.failures += 1
        self.started_at, self.restart_at = None, now + delay
        return delay

    def due(self, now: float) -> bool:
        """Whether a restart is waiting and its time has come."""
        return self.restart_at is not None and now >= self.restart_at

    @property
    def waiting(self) -> bool:
        return self.restart_at is not None
