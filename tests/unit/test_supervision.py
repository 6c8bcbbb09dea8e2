"""The restart schedule of ``maas up``: doubling delays up to a cap, forgiven after a healthy run."""

from __future__ import annotations

from infra.supervision import Backoff


def test_delays_double_up_to_the_cap() -> None:
    backoff = Backoff(first_s=1, max_s=8, healthy_after_s=60)
    now = 0.0
    delays = []
    for _ in range(6):
        backoff.started(now)
        now += 1  # dies a second after each start
        delays.append(backoff.died(now))
        now = backoff.restart_at or now
    assert delays == [1, 2, 4, 8, 8, 8]


def test_a_healthy_run_starts_the_backoff_over() -> None:
    backoff = Backoff(first_s=1, max_s=30, healthy_after_s=60)
    backoff.started(0)
    assert backoff.died(1) == 1
    backoff.started(2)
    assert backoff.died(3) == 2
    backoff.started(5)
    assert backoff.died(5 + 61) == 1  # ran over a minute: forgiven


def test_a_restart_is_due_only_once_its_delay_passed() -> None:
    backoff = Backoff(first_s=2)
    assert not backoff.waiting and not backoff.due(100)
    backoff.started(0)
    backoff.died(10)
    assert backoff.waiting and not backoff.due(11) and backoff.due(12)
    backoff.started(12)
    assert not backoff.waiting
