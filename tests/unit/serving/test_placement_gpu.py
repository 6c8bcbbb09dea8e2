"""Placement with GPU budgets: a server with a GPU places a replica only where its memory and its GPU memory both
fit, evicts for whichever is short, and a version too big for every GPU budget fails naming it; servers without a
GPU count memory only. Pure: no servers, no database."""

from __future__ import annotations

from core.deployments import ScalingSettings
from serving.placement import READY, DeploymentView, ReplicaView, ServerView, evict_kind, place

MB = 1 << 20


def deployment(model: str, memory=100, gpu=100, min_replicas=0, demand=False) -> DeploymentView:
    scaling = ScalingSettings(min_replicas, 1, 4, 600, 30_000)
    return DeploymentView(model, f"{model}-v1", model, scaling, memory * MB, demand=demand, gpu_memory_bytes=gpu * MB)


def replica(model: str, server: str, memory=100, gpu=100, idle_s=0.0, in_flight=0, evicting=False) -> ReplicaView:
    return ReplicaView(
        server, f"{model}-v1", model, READY, memory * MB, idle_s, in_flight, evicting, gpu_memory_bytes=gpu * MB
    )


def gpu_server(id: str, memory: int, gpu: int) -> ServerView:
    return ServerView(id, memory * MB, gpu * MB)


def test_a_replica_that_fits_in_memory_but_not_on_the_gpu_goes_to_another_server():
    servers = [gpu_server("roomy-memory", 1000, 100), gpu_server("roomy-gpu", 500, 400)]
    decisions = place(servers, [], [deployment("a", memory=200, gpu=300, demand=True)])
    assert [(a.server_id, a.memory_bytes, a.gpu_memory_bytes) for a in decisions.assign] == [
        ("roomy-gpu", 200 * MB, 300 * MB)
    ]


def test_on_a_server_without_a_gpu_a_replica_holds_no_gpu_memory_and_only_memory_counts():
    decisions = place([ServerView("cpu", 500 * MB)], [], [deployment("a", gpu=10_000, demand=True)])
    assert [(a.server_id, a.gpu_memory_bytes) for a in decisions.assign] == [("cpu", 0)]
    assert not decisions.fail


def test_gpu_memory_held_by_replicas_counts_against_the_gpu_budget():
    held = [replica("a", "g0", memory=10, gpu=250), replica("b", "g1", memory=10, gpu=50)]
    servers = [gpu_server("g0", 1000, 300), gpu_server("g1", 500, 300)]
    decisions = place(servers, held, [deployment("a"), deployment("b"), deployment("new", gpu=100, demand=True)])
    # g0 has more free memory, but only g1 has the GPU memory
    assert [a.server_id for a in decisions.assign] == ["g1"]


def test_short_of_gpu_memory_the_least_recently_used_idle_replicas_holding_it_are_evicted_until_it_fits():
    held = [
        replica("recent", "g0", memory=10, gpu=100, idle_s=10),
        replica("old", "g0", memory=10, gpu=100, idle_s=50),
        replica("oldest", "g0", memory=10, gpu=100, idle_s=90),
    ]
    deployments = [deployment(m) for m in ("recent", "old", "oldest")] + [deployment("new", gpu=150, demand=True)]
    decisions = place([gpu_server("g0", 1000, 300)], held, deployments)
    assert [e.model_id for e in decisions.evict] == ["oldest", "old"]  # memory was never short
    assert evict_kind(decisions.evict[0].reason) == "room"
    assert not decisions.assign and "evicting 2" in decisions.waiting["new"]


def test_a_replica_that_frees_nothing_on_the_gpu_is_passed_over_when_only_the_gpu_is_short():
    held = [replica("cpu-only", "g0", memory=50, gpu=0, idle_s=90), replica("on-gpu", "g0", memory=50, idle_s=10)]
    deployments = [deployment("cpu-only"), deployment("on-gpu"), deployment("new", memory=50, demand=True)]
    decisions = place([gpu_server("g0", 1000, 150)], held, deployments)
    assert [e.model_id for e in decisions.evict] == ["on-gpu"]


def test_pinned_replicas_are_never_evicted_for_gpu_memory():
    held = [replica("pinned", "g0", idle_s=1000), replica("busy", "g0", in_flight=2)]
    deployments = [deployment("pinned", min_replicas=1), deployment("busy"), deployment("new", demand=True)]
    decisions = place([gpu_server("g0", 1000, 250)], held, deployments)
    assert not decisions.evict and not decisions.assign
    assert "busy or pinned" in decisions.waiting["new"] and "100.0 MiB of GPU memory" in decisions.waiting["new"]


def test_gpu_memory_being_evicted_counts_until_it_is_gone():
    held = [replica("old", "g0", memory=10, gpu=200, idle_s=50, evicting=True)]
    decisions = place([gpu_server("g0", 1000, 250)], held, [deployment("old"), deployment("new", demand=True)])
    assert not decisions.assign and not decisions.evict
    assert "waiting for evicted" in decisions.waiting["new"]


def test_a_version_bigger_than_every_gpu_budget_fails_naming_the_gpu_budget_and_evicts_nothing():
    held = [replica("small", "g0", idle_s=500)]
    servers = [gpu_server("g0", 1000, 200), gpu_server("g1", 1000, 300)]
    decisions = place(servers, held, [deployment("small"), deployment("huge", gpu=400, demand=True)])
    assert not decisions.assign and not decisions.evict
    reason = decisions.fail["huge"]
    assert "400.0 MiB of GPU memory" in reason and "300.0 MiB" in reason
    assert "MAAS_MODEL_SERVER_GPU_MEMORY_BYTES" in reason


def test_a_version_too_big_for_every_gpu_still_goes_to_a_server_without_one():
    servers = [gpu_server("g0", 1000, 200), ServerView("cpu", 500 * MB)]
    decisions = place(servers, [], [deployment("huge", gpu=400, demand=True)])
    assert not decisions.fail
    assert [(a.server_id, a.gpu_memory_bytes) for a in decisions.assign] == [("cpu", 0)]


def test_a_version_too_big_in_memory_fails_naming_the_memory_budget_first():
    decisions = place([gpu_server("g0", 200, 200)], [], [deployment("huge", memory=400, gpu=400, demand=True)])
    assert "of memory" in decisions.fail["huge"] and "MAAS_MODEL_SERVER_MEMORY_BYTES" in decisions.fail["huge"]


def test_a_server_over_its_gpu_budget_sheds_idle_replicas_until_within_it():
    held = [
        replica("measured-big", "g0", memory=10, gpu=250, idle_s=5),
        replica("idle", "g0", memory=10, gpu=100, idle_s=60),
        replica("busy", "g0", memory=10, gpu=100, idle_s=99, in_flight=1),
    ]
    deployments = [deployment(m) for m in ("measured-big", "idle", "busy")]
    decisions = place([gpu_server("g0", 1000, 400)], held, deployments)
    assert [e.model_id for e in decisions.evict] == ["idle"]
    assert "GPU budget of 400.0 MiB" in decisions.evict[0].reason and "its budget of" not in decisions.evict[0].reason
