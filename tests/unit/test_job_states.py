import pytest

from core.job_states import NEXT, STATUSES, TERMINAL, can_transition, is_terminal, sources


def test_the_happy_path_and_requeue_are_allowed():
    assert can_transition("queued", "running")
    assert can_transition("running", "succeeded")
    assert can_transition("running", "queued")  # worker lost, attempts left
    assert can_transition("queued", "canceled")


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_never_change(terminal):
    assert is_terminal(terminal)
    assert not any(can_transition(terminal, target) for target in STATUSES)


def test_a_job_cannot_finish_without_running_except_by_cancel_or_failure():
    assert not can_transition("queued", "succeeded")
    assert sources("succeeded") == ("running",)
    assert set(sources("canceled")) == {"queued", "running"}


def test_every_status_is_in_the_table():
    assert set(NEXT) == set(STATUSES)
