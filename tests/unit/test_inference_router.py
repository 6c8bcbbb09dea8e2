"""The API's call to model servers: a replica that turns a request away (421) or cannot be reached is
left for another one, found by re-reading the routing table; a request for a deployment at zero waits
for a cold start (one demand per burst, sent when a replica shows up, 503 past its budget). Fake model
servers on loopback stand in."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from api.inference_router import NO_ROUTE_REFRESH_GAP_S, InferenceFailed, InferenceRouter
from api.routing_table import DeployedRow, NoRoute, NotReady, ReplicaRow, RoutingTable, VersionRow, build_table
from core.deployments import BatchingSettings
from core.settings import Settings
from core.tensor_codec import InferenceRequest, Tensor
from core.tensor_wire import pack, unpack

SIGNATURE = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}], "outputs": []}
CALLS: list[str] = []  # which fake server answered, in order
BATCHING = BatchingSettings(max_batch_size=4, max_queue_delay_us=0, max_queue_size=8, timeout_ms=1000)


def fake_server(status: int, calls: list[str], name: str) -> web.Application:
    async def infer(request: web.Request) -> web.Response:
        calls.append(name)
        arrays, _ = unpack(await request.read())
        if status != 200:
            return web.json_response({"error": f"{name} says {status}"}, status=status)
        stats = {"queue_ms": 0.1, "inference_ms": 0.2, "batch_id": f"{name}-1", "batch_size": 1}
        return web.Response(body=pack({"y": arrays["x"] * 2}, stats))

    app = web.Application()
    app.router.add_post("/v1/infer/{version_id}", infer)
    return app


def table(*servers: tuple[str, str]) -> RoutingTable:
    version = VersionRow("t", "m", "mdl", "mv1", 1, SIGNATURE)
    deployed = [DeployedRow(version, BATCHING)]
    ready = [ReplicaRow(version, sid, url) for sid, url in servers]
    return build_table(deployed, ready, dict(servers))


def request() -> InferenceRequest:
    return InferenceRequest([Tensor("x", "FP32", np.ones((1, 2), np.float32))])


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@contextlib.asynccontextmanager
async def router_with(first: RoutingTable, refreshed: RoutingTable) -> AsyncIterator[InferenceRouter]:
    """A router whose first table read gives ``first`` and every later one ``refreshed``."""
    router = InferenceRouter(Settings(routing_refresh_s=3600), db=None)  # type: ignore[arg-type]
    tables = iter([first])

    async def read_table() -> RoutingTable:
        return next(tables, refreshed)

    router._read_table = read_table  # type: ignore[method-assign]
    await router.start()
    try:
        yield router
    finally:
        router.recorder.buffer.take(1000)  # no database to record into here
        await router.stop()


@pytest.fixture
async def urls() -> AsyncIterator[dict[str, str]]:
    servers = {
        name: TestServer(fake_server(status, CALLS, name))
        for status, name in ((421, "draining"), (200, "fresh"), (503, "full"))
    }
    for server in servers.values():
        await server.start_server()
    CALLS.clear()
    yield {name: str(server.make_url("")).rstrip("/") for name, server in servers.items()}
    for server in servers.values():
        await server.close()


async def test_a_draining_replica_sends_the_request_to_the_one_the_refreshed_table_knows(urls):
    async with router_with(
        table(("a", urls["draining"])), table(("a", urls["draining"]), ("b", urls["fresh"]))
    ) as router:
        result = await router.infer("t", "m", None, request)
    assert CALLS == ["draining", "fresh"]
    np.testing.assert_array_equal(result.outputs["y"], [[2, 2]])
    assert result.stats["batch_id"] == "fresh-1"


async def test_an_unreachable_replica_is_skipped(urls):
    both = table(("gone", closed_port_url()), ("b", urls["fresh"]))
    async with router_with(both, both) as router:
        for _ in range(3):
            assert (await router.infer("t", "m", None, request)).stats["batch_id"] == "fresh-1"


async def test_when_every_replica_turns_it_away_the_answer_is_503_with_retry_after(urls):
    only_draining = table(("a", urls["draining"]))
    async with router_with(only_draining, only_draining) as router:
        with pytest.raises(InferenceFailed) as caught:
            await router.infer("t", "m", None, request)
    assert (caught.value.status, caught.value.code, caught.value.headers) == (503, "unavailable", {"Retry-After": "1"})


async def test_a_full_queue_is_passed_on_as_503_and_not_retried(urls):
    full = table(("c", urls["full"]))
    async with router_with(full, full) as router:
        with pytest.raises(InferenceFailed) as caught:
            await router.infer("t", "m", None, request)
        recorded = list(router.recorder.buffer.take(10))
    assert (caught.value.status, caught.value.code) == (503, "queue_full")
    assert caught.value.message == "full says 503" and CALLS == ["full"]
    assert [(r["status"], r["error"]["code"]) for r in recorded] == [("failed", "queue_full")]


# ---------------------------------------------------------------- cold starts (api.cold_start)


def at_zero(*servers: tuple[str, str], budget_ms: int = 5000) -> RoutingTable:
    """The deployment with a cold-start budget, and ``servers`` as its ready replicas (none: scaled to zero)."""
    version = VersionRow("t", "m", "mdl", "mv1", 1, SIGNATURE)
    deployed = [DeployedRow(version, BATCHING, cold_start_timeout_ms=budget_ms)]
    return build_table(deployed, [ReplicaRow(version, sid, url) for sid, url in servers], dict(servers))


@contextlib.asynccontextmanager
async def cold_router(tables: list[RoutingTable]) -> AsyncIterator[tuple[InferenceRouter, list[str], list[float]]]:
    """A router reading ``tables[-1]`` at each refresh (the test appends), its demand signals and cold starts."""
    demanded: list[str] = []
    waited: list[float] = []
    router = InferenceRouter(
        Settings(routing_refresh_s=3600, cold_start_max_waiting=40),
        db=None,  # type: ignore[arg-type]
        on_cold_start=lambda transport, seconds: waited.append(seconds),
    )

    async def read_table() -> RoutingTable:
        return tables[-1]

    async def signal_demand(model_id: str) -> None:
        demanded.append(model_id)

    router._read_table = read_table  # type: ignore[method-assign]
    router._signal_demand = signal_demand  # type: ignore[method-assign]
    await router.start()
    try:
        yield router, demanded, waited
    finally:
        router.recorder.buffer.take(1000)
        await router.stop()


async def test_requests_at_zero_wait_on_one_demand_and_are_sent_when_a_replica_is_ready(urls):
    tables = [at_zero()]
    async with cold_router(tables) as (router, demanded, waited):
        held = [asyncio.create_task(router.infer("t", "m", None, request)) for _ in range(32)]
        await asyncio.sleep(0.1)
        assert not any(task.done() for task in held) and router.cold_starts.held == 32
        tables.append(at_zero(("b", urls["fresh"])))
        router._replicas_changed("mv1")  # what a REPLICAS_CHANNEL notification does: the loop re-reads now
        results = await asyncio.wait_for(asyncio.gather(*held), 5)
    assert demanded == ["mdl"]  # one signal for the burst
    assert [r.stats["batch_id"] for r in results] == ["fresh-1"] * 32
    assert len(waited) == 32 and all(0.05 <= s < 5 for s in waited)  # each held until the replica showed up
    assert router.cold_starts.held == 0 and router.cold_starts.waiters == {}


async def test_past_the_cold_start_budget_the_answer_is_503_with_retry_after():
    async with cold_router([at_zero(budget_ms=200)]) as (router, demanded, _):
        with pytest.raises(InferenceFailed) as caught:
            await router.infer("t", "m", None, request)
        recorded = list(router.recorder.buffer.take(10))
    assert (caught.value.status, caught.value.code, caught.value.headers) == (
        503,
        "cold_start_timeout",
        {"Retry-After": "1"},
    )
    assert "cold_start_timeout_ms (200 ms)" in caught.value.message and demanded == ["mdl"]
    assert [(r["status"], r["error"]["code"]) for r in recorded] == [("failed", "cold_start_timeout")]


async def test_without_a_budget_or_after_a_failed_load_a_request_does_not_wait():
    for routes in (
        at_zero(budget_ms=0),
        build_table(
            [
                DeployedRow(
                    VersionRow("t", "m", "mdl", "mv1", 1, SIGNATURE),
                    BATCHING,
                    cold_start_timeout_ms=5000,
                    failed="too big",
                )
            ],
            [],
            {},
        ),
    ):
        async with cold_router([routes]) as (router, demanded, _):
            with pytest.raises(NotReady):
                await router.infer("t", "m", None, request)
        assert demanded == []


async def test_a_replica_unloaded_under_a_request_sends_it_back_to_wait_for_the_next_one(urls):
    tables = [at_zero(("a", urls["draining"]))]  # the table still lists it; it answers 421
    async with cold_router(tables) as (router, demanded, waited):
        tables.append(at_zero())  # the refresh after the 421 finds none: scaled to zero meanwhile
        task = asyncio.create_task(router.infer("t", "m", None, request))
        await asyncio.sleep(0.1)
        assert not task.done() and demanded == ["mdl"]
        tables.append(at_zero(("b", urls["fresh"])))
        await router.refresh()
        result = await asyncio.wait_for(task, 5)
    assert CALLS == ["draining", "fresh"] and result.stats["batch_id"] == "fresh-1" and len(waited) == 1


async def test_a_client_that_goes_away_stops_waiting():
    left: list[bool] = []
    async with cold_router([at_zero()]) as (router, _, waited):
        task = asyncio.create_task(router.infer("t", "m", None, request, gone=lambda: bool(left)))
        await asyncio.sleep(0.1)
        left.append(True)
        with pytest.raises(InferenceFailed) as caught:
            await asyncio.wait_for(task, 2)
        assert router.cold_starts.held == 0
    assert caught.value.status == 499 and waited == []


async def test_past_the_bound_on_held_requests_a_request_is_refused_at_once():
    async with cold_router([at_zero()]) as (router, _, _):
        held = [asyncio.create_task(router.infer("t", "m", None, request)) for _ in range(40)]
        await asyncio.sleep(0.1)
        with pytest.raises(InferenceFailed) as caught:
            await router.infer("t", "m", None, request)
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    assert (caught.value.status, caught.value.code) == (503, "cold_start_full")


async def test_requests_for_an_unknown_model_share_table_reads_instead_of_one_each():
    reads: list[int] = []
    async with cold_router([at_zero()]) as (router, _, _):
        original = router._read_table

        async def counted() -> RoutingTable:
            reads.append(1)
            return await original()

        router._read_table = counted  # type: ignore[method-assign]
        burst = await asyncio.gather(*(router.lookup("t", "nope", None) for _ in range(20)), return_exceptions=True)
        assert all(isinstance(r, NoRoute) for r in burst) and len(reads) == 1  # a burst: one read
        reads.clear()
        started = time.monotonic()
        for _ in range(10):  # one after another: each may need a read, but no more often than the gap allows
            with pytest.raises(NoRoute):
                await router.lookup("t", "nope", None)
        elapsed = time.monotonic() - started
    assert len(reads) <= elapsed / NO_ROUTE_REFRESH_GAP_S + 1
