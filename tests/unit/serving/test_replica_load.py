"""A replica's load as the autoscaler sees it: the mean of requests in flight over each heartbeat's window."""

from __future__ import annotations

from serving.metrics import ModelLabels
from serving.plan import READY
from serving.replica import LoadedReplica


def replica() -> LoadedReplica:
    return LoadedReplica("mv_1", "mdl_1", ModelLabels("ten_1", "m", "1"), READY, 0.0)


def test_the_mean_in_flight_weighs_each_count_by_how_long_it_lasted():
    r = replica()
    r.mean_in_flight(10.0)  # the window starts
    r.request_started(10.0)
    r.request_started(10.0)
    r.request_ended(10.5)  # 2 for 0.5 s
    r.request_ended(11.0)  # 1 for 0.5 s
    assert r.mean_in_flight(12.0) == (2 * 0.5 + 1 * 0.5) / 2.0
    assert r.last_used == 10.0 and r.in_flight == 0


def test_each_window_starts_afresh_and_a_request_still_running_counts():
    r = replica()
    r.mean_in_flight(0.0)
    r.request_started(1.0)
    assert r.mean_in_flight(2.0) == 0.5
    assert r.mean_in_flight(3.0) == 1.0  # still running through the whole second window
