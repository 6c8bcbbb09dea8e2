"""The API's routing table: targets for requests (with the fallback that makes switches lossless) and replica choice."""

from __future__ import annotations

import pytest

from api.routing_table import (
    DeployedRow,
    NoRoute,
    NotReady,
    ReplicaRow,
    RoutableReplica,
    RoutingTable,
    VersionRow,
    build_table,
    pick_replica,
)
from core.deployments import BatchingSettings

BATCHING = BatchingSettings(max_batch_size=8, max_queue_delay_us=500, max_queue_size=64, timeout_ms=1000)
SIGNATURES = {n: {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, n]}], "outputs": []} for n in (1, 2, 3)}


def version(number: int, tenant: str, name: str) -> VersionRow:
    return VersionRow(tenant, name, f"{tenant}-{name}", f"{tenant}-{name}-v{number}", number, SIGNATURES[number])


def deployed(number: int, tenant: str = "t1", name: str = "m") -> DeployedRow:
    return DeployedRow(version(number, tenant, name), BATCHING)


def ready(number: int, server: str, tenant: str = "t1", name: str = "m") -> ReplicaRow:
    return ReplicaRow(version(number, tenant, name), server, f"http://{server}")


def table(deployments: list[DeployedRow], replicas: list[ReplicaRow]) -> RoutingTable:
    servers = {row.server_id: row.url for row in replicas}
    return build_table(deployments, replicas, servers)


def test_requests_go_to_the_deployed_versions_ready_replicas():
    routes = table([deployed(2)], [ready(2, "s1"), ready(2, "s2")])
    target = routes.resolve("t1", "m")
    assert target.version.number == 2 and target.version.signature == SIGNATURES[2]
    assert [r.server_id for r in target.version.replicas] == ["s1", "s2"]
    assert target.batching == BATCHING


def test_while_the_new_version_loads_the_previous_one_answers():
    routes = table([deployed(3)], [ready(1, "s1"), ready(2, "s1")])
    assert routes.resolve("t1", "m").version.number == 2  # the newest version that can still answer
    assert routes.resolve("t1", "m", 1).version.number == 1
    with pytest.raises(NotReady):
        routes.resolve("t1", "m", 3)


def test_a_deployed_version_without_any_ready_replica_is_not_ready():
    routes = table([deployed(1)], [])
    with pytest.raises(NotReady):
        routes.resolve("t1", "m")
    assert not routes.tenant_ready("t1")


def test_unknown_models_versions_and_other_tenants_have_no_route():
    routes = table([deployed(1)], [ready(1, "s1")])
    for tenant, name, version in (("t1", "other", None), ("t2", "m", None), ("t1", "m", 2)):
        with pytest.raises(NoRoute):
            routes.resolve(tenant, name, version)


def test_an_undeployed_model_answers_only_until_its_replicas_retire():
    leftover = table([], [ready(1, "s1")])
    assert leftover.resolve("t1", "m").version.number == 1
    assert not leftover.tenant_ready("t1")
    with pytest.raises(NoRoute):
        table([], []).resolve("t1", "m")


def test_readiness_is_per_tenant():
    routes = table([deployed(1), deployed(1, tenant="t2")], [ready(1, "s1")])
    assert routes.tenant_ready("t1")
    assert not routes.tenant_ready("t2")
    assert not routes.tenant_ready("t3")


def test_the_least_busy_replica_wins_and_equals_take_turns():
    replicas = [RoutableReplica("a", "http://a"), RoutableReplica("b", "http://b"), RoutableReplica("c", "http://c")]
    assert pick_replica(replicas, {"a": 3, "b": 1, "c": 2}, turn=0).server_id == "b"
    picks = {pick_replica(replicas, {}, turn=turn).server_id for turn in range(3)}
    assert picks == {"a", "b", "c"}
    assert pick_replica(replicas, {"a": 0, "b": 5}, turn=1, exclude={"a"}).server_id == "c"
    assert pick_replica(replicas, {}, turn=0, exclude={"a", "b", "c"}) is None
    assert pick_replica([], {}, turn=0) is None


def test_a_deployment_at_zero_with_a_cold_start_budget_lets_the_request_wait_for_its_version():
    routes = table([DeployedRow(version(2, "t1", "m"), BATCHING, cold_start_timeout_ms=5000)], [])
    with pytest.raises(NotReady) as raised:
        routes.resolve("t1", "m")
    pending = raised.value.pending
    assert pending is not None and pending.version.number == 2 and pending.version.replicas == ()
    assert pending.model.cold_start_timeout_ms == 5000
    with pytest.raises(NotReady) as named:
        routes.resolve("t1", "m", 2)
    assert named.value.pending is not None


def test_an_older_version_still_serving_is_preferred_to_waiting_for_a_cold_start():
    routes = table([DeployedRow(version(2, "t1", "m"), BATCHING, cold_start_timeout_ms=5000)], [ready(1, "s1")])
    assert routes.resolve("t1", "m").version.number == 1


def test_a_failed_load_or_no_budget_is_not_ready_at_once():
    failed = table([DeployedRow(version(2, "t1", "m"), BATCHING, cold_start_timeout_ms=5000, failed="too big")], [])
    with pytest.raises(NotReady, match="too big") as raised:
        failed.resolve("t1", "m")
    assert raised.value.pending is None
    no_budget = table([DeployedRow(version(2, "t1", "m"), BATCHING, cold_start_timeout_ms=0)], [])
    with pytest.raises(NotReady) as refused:
        no_budget.resolve("t1", "m")
    assert refused.value.pending is None
