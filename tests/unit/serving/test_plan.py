"""The model server's plan: what to load, rebatch, retire and unload, from deployments and what it holds."""

from __future__ import annotations

from core.deployments import BatchingSettings
from serving.plan import DRAINING, FAILED, LOADING, READY, UNLOADING, Held, ReplicaSteps, Wanted, plan

SMALL = BatchingSettings(max_batch_size=8, max_queue_delay_us=500, max_queue_size=64, timeout_ms=1000)
LARGE = BatchingSettings(max_batch_size=32, max_queue_delay_us=500, max_queue_size=64, timeout_ms=1000)
GRACE_S, RETRY_S, NOW = 1.0, 30.0, 100.0


def held(version: str, status: str, since: float = NOW, model: str = "m", batching=SMALL) -> dict[str, Held]:
    return {version: Held(version, model, status, batching, since)}


def steps(wanted: list[Wanted], holding: dict[str, Held]) -> ReplicaSteps:
    return plan(wanted, holding, NOW, grace_s=GRACE_S, retry_s=RETRY_S)


def test_a_new_deployment_is_loaded_and_a_ready_one_left_alone():
    assert steps([Wanted("v1", "m", SMALL)], {}) == ReplicaSteps(load=["v1"])
    assert not steps([Wanted("v1", "m", SMALL)], held("v1", READY))
    assert not steps([Wanted("v1", "m", SMALL)], held("v1", LOADING))


def test_changed_batching_settings_rebuild_the_batcher():
    assert steps([Wanted("v1", "m", LARGE)], held("v1", READY)) == ReplicaSteps(rebatch=["v1"])


def test_the_old_version_serves_until_the_new_one_is_ready_here():
    wanted = [Wanted("v2", "m", SMALL)]
    assert steps(wanted, held("v1", READY)) == ReplicaSteps(load=["v2"])
    assert not steps(wanted, held("v1", READY) | held("v2", LOADING))
    assert steps(wanted, held("v1", READY) | held("v2", READY)) == ReplicaSteps(retire=["v1"])


def test_a_failed_new_version_leaves_the_old_one_serving_and_is_retried_later():
    wanted = [Wanted("v2", "m", SMALL)]
    assert not steps(wanted, held("v1", READY) | held("v2", FAILED, since=NOW - 1))
    assert steps(wanted, held("v1", READY) | held("v2", FAILED, since=NOW - RETRY_S)) == ReplicaSteps(load=["v2"])


def test_a_retired_version_serves_through_its_grace_then_is_unloaded():
    assert not steps([], held("v1", DRAINING, since=NOW - GRACE_S / 2))
    assert steps([], held("v1", DRAINING, since=NOW - GRACE_S)) == ReplicaSteps(unload=["v1"])
    assert not steps([], held("v1", UNLOADING, since=NOW - 10 * GRACE_S))


def test_undeploying_retires_at_once_and_redeploying_while_draining_reinstates():
    assert steps([], held("v1", READY)) == ReplicaSteps(retire=["v1"])
    assert steps([Wanted("v1", "m", SMALL)], held("v1", DRAINING)) == ReplicaSteps(reinstate=["v1"])


def test_a_version_being_unloaded_is_loaded_again_only_once_it_is_gone():
    assert not steps([Wanted("v1", "m", SMALL)], held("v1", UNLOADING))
    assert steps([Wanted("v1", "m", SMALL)], {}) == ReplicaSteps(load=["v1"])


def test_failed_versions_no_longer_deployed_are_dropped():
    assert steps([], held("v1", FAILED)) == ReplicaSteps(unload=["v1"])


def test_models_are_planned_independently():
    wanted = [Wanted("a2", "a", SMALL), Wanted("b1", "b", SMALL)]
    holding = held("a1", READY, model="a") | held("a2", READY, model="a") | held("b1", LOADING, model="b")
    assert steps(wanted, holding) == ReplicaSteps(retire=["a1"])
