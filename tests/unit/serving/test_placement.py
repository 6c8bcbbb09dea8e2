"""Placement: where replicas go, which leave and why, from servers, their replicas and the deployments; and the
autoscaler's trend. Pure: no servers, no database."""

from __future__ import annotations

from core.deployments import ScalingSettings
from serving.placement import (
    ASSIGNED,
    DOWN,
    FAILED,
    READY,
    UP,
    DeploymentView,
    ReplicaView,
    ServerView,
    Trend,
    autoscale_signal,
    estimated_memory,
    evict_kind,
    observe,
    place,
)

MB = 1 << 20


def scaling(min_replicas=0, max_replicas=1, target=4, idle_s=600) -> ScalingSettings:
    return ScalingSettings(min_replicas, max_replicas, target, idle_s, 30_000)


def deployment(model: str, memory=100 * MB, version: str | None = None, **kwargs) -> DeploymentView:
    settings = {k: kwargs.pop(k) for k in ("min_replicas", "max_replicas", "target", "idle_s") if k in kwargs}
    return DeploymentView(model, version or f"{model}-v1", model, scaling(**settings), memory, **kwargs)


def replica(model: str, server: str, status=READY, memory=100 * MB, idle_s=0.0, in_flight=0, version=None, **kw):
    return ReplicaView(server, version or f"{model}-v1", model, status, memory, idle_s, in_flight, **kw)


def servers(*budgets_mb: int) -> list[ServerView]:
    return [ServerView(f"s{i}", mb * MB) for i, mb in enumerate(budgets_mb)]


def held_after(decisions, replicas, server: str) -> int:
    kept = sum(r.memory_bytes for r in replicas if r.server_id == server and r.status != FAILED)
    return kept + sum(a.memory_bytes for a in decisions.assign if a.server_id == server)


def test_a_waiting_request_places_one_replica_where_most_memory_is_free():
    decisions = place(servers(300, 500), [], [deployment("a", demand=True)])
    assert [(a.model_id, a.server_id, a.action) for a in decisions.assign] == [("a", "s1", "assign")]
    assert "request waits" in decisions.assign[0].reason


def test_scaled_to_zero_without_demand_places_nothing():
    decisions = place(servers(500), [], [deployment("a")])
    assert not decisions.assign and not decisions.evict and not decisions.fail


def test_min_replicas_are_spread_over_servers():
    decisions = place(servers(500, 500, 500), [], [deployment("a", min_replicas=2, max_replicas=2)])
    assert len(decisions.assign) == 2 and len({a.server_id for a in decisions.assign}) == 2
    assert all(a.reason == "min_replicas is 2" for a in decisions.assign)


def test_replicas_never_outnumber_the_servers():
    decisions = place(servers(500), [], [deployment("a", min_replicas=3, max_replicas=3)])
    assert len(decisions.assign) == 1


def test_demand_is_met_once_a_replica_is_ready_not_while_it_loads():
    a = deployment("a", demand=True)
    assert place(servers(500), [replica("a", "s0", status=ASSIGNED)], [a]).clear_demand == []
    decisions = place(servers(500), [replica("a", "s0")], [a])
    assert decisions.clear_demand == ["a"] and not decisions.assign


def test_when_nothing_fits_the_least_recently_used_idle_replica_is_evicted_first_and_the_new_one_waits():
    held = [
        replica("old", "s0", idle_s=50),
        replica("older", "s0", idle_s=90),
        replica("busy", "s0", idle_s=99, in_flight=1),
    ]
    decisions = place(
        servers(300), held, [deployment(m) for m in ("old", "older", "busy")] + [deployment("new", demand=True)]
    )
    assert [(e.model_id, e.action) for e in decisions.evict] == [("older", "evict")]
    assert evict_kind(decisions.evict[0].reason) == "room" and "new" in decisions.evict[0].reason
    assert not decisions.assign  # placed once the evicted replica's memory is free, never over budget
    assert "evicting" in decisions.waiting["new"]


def test_a_pinned_replica_is_never_the_one_evicted():
    held = [replica("pinned", "s0", idle_s=1000), replica("other", "s0", idle_s=5)]
    deployments = [deployment("pinned", min_replicas=1), deployment("other"), deployment("new", demand=True)]
    decisions = place(servers(200), held, deployments)
    assert [e.model_id for e in decisions.evict] == ["other"]


def test_only_pinned_or_busy_replicas_leave_the_request_waiting_and_evict_nothing():
    held = [replica("pinned", "s0", idle_s=1000), replica("busy", "s0", in_flight=3)]
    deployments = [deployment("pinned", min_replicas=1), deployment("busy"), deployment("new", demand=True)]
    decisions = place(servers(200), held, deployments)
    assert not decisions.evict and not decisions.assign
    assert "busy or pinned" in decisions.waiting["new"]


def test_while_evictions_are_under_way_no_more_replicas_are_evicted():
    held = [replica("old", "s0", idle_s=50, evicting=True), replica("other", "s0", idle_s=10)]
    decisions = place(servers(200), held, [deployment("old"), deployment("other"), deployment("new", demand=True)])
    assert not decisions.evict and not decisions.assign
    assert "waiting for evicted" in decisions.waiting["new"]


def test_evicted_memory_counts_until_it_is_gone_so_a_budget_is_never_exceeded():
    held = [replica("a", "s0", memory=150 * MB, evicting=True)]
    decisions = place(servers(200), held, [deployment("b", demand=True)])
    assert not decisions.assign
    decisions = place(servers(200), [], [deployment("b", demand=True)])
    assert held_after(decisions, [], "s0") <= 200 * MB


def test_assigned_and_loading_replicas_count_against_the_budget():
    held = [replica("a", "s0", status=ASSIGNED, memory=150 * MB)]
    decisions = place(servers(200, 120), held, [deployment("a"), deployment("b", demand=True)])
    assert [(a.model_id, a.server_id) for a in decisions.assign] == [("b", "s1")]


def test_a_model_bigger_than_every_budget_fails_with_the_reason_and_evicts_nothing():
    held = [replica("small", "s0", idle_s=500)]
    decisions = place(servers(200, 300), held, [deployment("small"), deployment("huge", memory=400 * MB, demand=True)])
    assert not decisions.assign and not decisions.evict
    assert "400.0 MiB" in decisions.fail["huge"] and "300.0 MiB" in decisions.fail["huge"]


def test_a_never_measured_version_estimated_above_every_budget_but_whose_weights_fit_takes_a_whole_server():
    held = [replica("small", "s0", memory=50 * MB, idle_s=500)]
    estimated = deployment("new", memory=400 * MB, least_memory_bytes=180 * MB, demand=True)
    decisions = place(servers(200), held, [deployment("small"), estimated])
    assert not decisions.fail
    assert [(e.model_id, e.server_id) for e in decisions.evict] == [("small", "s0")]  # room for 200, not 400
    assert "evicting 1" in decisions.waiting["new"]
    decisions = place(servers(200), [], [deployment("small"), estimated])  # once the room is free
    assert [(a.model_id, a.memory_bytes) for a in decisions.assign] == [("new", 200 * MB)]


def test_a_measured_version_that_fits_only_without_its_margin_is_placed_not_failed():
    reserve = estimated_memory(190 * MB, 90 * MB, 4.0)  # 209 MiB with the margin
    decisions = place(servers(200), [], [deployment("big", memory=reserve, least_memory_bytes=190 * MB, demand=True)])
    assert not decisions.fail and [a.memory_bytes for a in decisions.assign] == [200 * MB]


def test_a_never_measured_version_whose_weights_alone_fit_nowhere_fails_naming_them():
    estimated = deployment("huge", memory=800 * MB, least_memory_bytes=250 * MB, demand=True)
    decisions = place(servers(200), [], [estimated])
    assert not decisions.assign
    assert "needs 250.0 MiB" in decisions.fail["huge"] and "200.0 MiB" in decisions.fail["huge"]


def test_a_failed_deployment_that_fits_again_is_unfailed():
    decisions = place(servers(500), [], [deployment("a", memory=100 * MB, failed=True, demand=True)])
    assert decisions.unfail == ["a"] and len(decisions.assign) == 1


def test_idle_replicas_unload_down_to_min_replicas():
    held = [replica("zero", "s0", idle_s=61), replica("one", "s0", idle_s=61), replica("one", "s1", idle_s=70)]
    deployments = [deployment("zero", idle_s=60), deployment("one", min_replicas=1, max_replicas=2, idle_s=60)]
    decisions = place(servers(500, 500), held, deployments)
    assert sorted((e.model_id, e.server_id) for e in decisions.evict) == [("one", "s1"), ("zero", "s0")]
    assert all(evict_kind(e.reason) == "idle" for e in decisions.evict)


def test_a_replica_with_requests_in_flight_or_recent_traffic_is_not_idle():
    held = [replica("a", "s0", idle_s=61, in_flight=1), replica("b", "s0", idle_s=10)]
    assert not place(servers(500), held, [deployment("a", idle_s=60), deployment("b", idle_s=60)]).evict


def test_autoscaling_up_adds_a_replica_on_another_server():
    held = [replica("a", "s0", in_flight=20)]
    decisions = place(servers(500, 500), held, [deployment("a", max_replicas=2, autoscale=UP)])
    assert [(a.server_id, a.action) for a in decisions.assign] == [("s1", "scale_up")]


def test_autoscaling_up_stops_at_max_replicas_and_waits_for_a_loading_one():
    held = [replica("a", "s0", in_flight=20)]
    assert not place(servers(500, 500), held, [deployment("a", max_replicas=1, autoscale=UP)]).assign
    held = [replica("a", "s0", in_flight=20), replica("a", "s1", status=ASSIGNED)]
    assert not place(servers(500, 500, 500), held, [deployment("a", max_replicas=3, autoscale=UP)]).assign


def test_autoscaling_down_drains_the_quietest_replica_but_never_the_last():
    held = [replica("a", "s0", in_flight=2), replica("a", "s1", in_flight=0)]
    decisions = place(servers(500, 500), held, [deployment("a", max_replicas=2, autoscale=DOWN)])
    assert [(e.server_id, e.action) for e in decisions.evict] == [("s1", "scale_down")]
    assert not place(servers(500, 500), held[:1], [deployment("a", max_replicas=2, autoscale=DOWN)]).evict


def test_after_a_version_switch_the_old_version_leaves_once_the_new_one_is_ready():
    new = deployment("a", version="a-v2")
    loading = [replica("a", "s0", version="a-v1"), replica("a", "s1", version="a-v2", status=ASSIGNED)]
    assert not place(servers(500, 500), loading, [new]).evict
    ready = [replica("a", "s0", version="a-v1"), replica("a", "s1", version="a-v2")]
    decisions = place(servers(500, 500), ready, [new])
    assert [(e.version_id, e.server_id) for e in decisions.evict] == [("a-v1", "s0")]
    assert evict_kind(decisions.evict[0].reason) == "version_switch"


def test_replicas_of_dead_servers_are_ignored():
    decisions = place(servers(200), [replica("a", "gone", memory=190 * MB)], [deployment("a", demand=True)])
    assert [a.server_id for a in decisions.assign] == ["s0"]


def test_when_a_server_is_gone_its_replicas_are_placed_again_on_the_servers_left():
    # "gone" held a's only replica and one of b's two; no request waits: min_replicas alone brings them back
    held = [replica("a", "gone"), replica("b", "gone"), replica("b", "s0")]
    pinned = [deployment("a", min_replicas=1), deployment("b", min_replicas=2, max_replicas=2)]
    decisions = place(servers(500, 500), held, pinned)
    assert sorted((a.model_id, a.server_id, a.reason) for a in decisions.assign) == [
        ("a", "s1", "min_replicas is 1"),  # where most memory is free
        ("b", "s1", "min_replicas is 2"),  # not next to its replica on s0
    ]
    assert not decisions.evict and not decisions.fail


def test_the_trend_says_up_after_the_upscale_delay_and_down_after_the_downscale_delay():
    trend = observe(Trend(), in_flight=20, replicas=1, target=4, now=0.0)
    assert autoscale_signal(trend, 1.0, upscale_delay_s=3, downscale_delay_s=30) is None
    trend = observe(trend, in_flight=20, replicas=1, target=4, now=3.0)
    assert autoscale_signal(trend, 3.0, upscale_delay_s=3, downscale_delay_s=30) == UP
    trend = observe(trend, in_flight=3, replicas=2, target=4, now=4.0)  # 1.5 per replica: well below 4
    assert trend.above_since is None
    assert autoscale_signal(trend, 20.0, upscale_delay_s=3, downscale_delay_s=30) is None
    assert autoscale_signal(trend, 34.0, upscale_delay_s=3, downscale_delay_s=30) == DOWN
    # a burst in between starts the count again
    assert observe(trend, in_flight=8, replicas=2, target=4, now=5.0) == Trend()


def test_memory_is_the_measure_once_known_and_the_file_size_times_the_factor_before():
    assert estimated_memory(None, 10 * MB, 2.0) == 20 * MB
    assert estimated_memory(30 * MB, 10 * MB, 2.0) == 33 * MB  # with room for a load that measures a little more
    assert estimated_memory(1 * MB, 10 * MB, 2.0) == 10 * MB  # never less than the weights themselves


def test_a_server_over_its_budget_after_a_load_measured_more_sheds_its_least_recently_used_idle_replica():
    held = [replica("a", "s0", memory=120 * MB, idle_s=30), replica("b", "s0", memory=100 * MB, idle_s=5)]
    decisions = place(servers(200), held, [deployment("a"), deployment("b")])
    assert [(e.model_id, evict_kind(e.reason)) for e in decisions.evict] == [("a", "room")]


def test_lowering_max_replicas_drains_the_quietest_extra_replicas():
    held = [replica("a", "s0", in_flight=3), replica("a", "s1", in_flight=0), replica("a", "s2", in_flight=1)]
    decisions = place(servers(500, 500, 500), held, [deployment("a", max_replicas=1)])
    assert sorted(e.server_id for e in decisions.evict) == ["s1", "s2"]
    assert all(e.action == "scale_down" and "max_replicas is 1" in e.reason for e in decisions.evict)
