"""Rate limits per API key against the real API, PostgreSQL and (for the shared budget) two API
processes (``python -m api``) taking tokens from one bucket.

The requests here are cheap on purpose: an inference call for a model that does not exist still
takes its token (the limit is checked before anything else), then answers 404.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import Iterator

import aiohttp
import grpc
import pytest
from sqlalchemy import select

from api.context import CONTEXT
from api.grpc_server import GRPC_ENDPOINT
from api.oip_grpc import open_inference_grpc_pb2 as pb
from api.oip_grpc import open_inference_grpc_pb2_grpc as pb_grpc
from api.rate_limits import INFERENCE, bucket_key
from core import quotas
from core.models import Job, RateBucket
from core.settings import Settings, to_env
from tests.integration.test_tenant_quotas import count, set_quota
from tests.support.eventually import eventually
from tests.support.processes import start, stop

QUEUED = {"type": "test.unclaimed", "spec": {}}
INFER = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [0, 0, 0, 0]}]}
HEADERS = ("RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset")


def rate_headers(response) -> tuple[int, int, int]:
    return tuple(int(response.headers[name]) for name in HEADERS)  # type: ignore[return-value]


async def test_limited_calls_carry_the_headers_on_success_and_on_errors(api, db, tenant, settings):
    created = await api.post("/v1/jobs", json=QUEUED, headers=tenant.headers)
    assert created.status == 201
    limit, remaining, reset = rate_headers(created)
    assert limit == settings.quota_creates_per_min
    assert 0 <= remaining < limit and 0 <= reset <= 60

    missing = await api.post("/v2/models/nope/infer", json=INFER, headers=tenant.headers)
    assert missing.status == 404
    assert rate_headers(missing)[0] == settings.quota_inference_per_min

    listed = await api.get("/v1/jobs", headers=tenant.headers)  # reads are not limited
    assert listed.status == 200 and "RateLimit-Limit" not in listed.headers


async def test_inference_past_the_limit_is_429_over_rest_and_resource_exhausted_over_grpc(api, db, tenant):
    set_quota(db, tenant, quotas.INFERENCE_PER_MIN, 3)
    remaining = []
    for _ in range(3):
        answer = await api.post("/v2/models/nope/infer", json=INFER, headers=tenant.headers)
        assert answer.status == 404
        remaining.append(rate_headers(answer)[1])
    assert remaining == [2, 1, 0]

    refused = await api.post("/v2/models/nope/infer", json=INFER, headers=tenant.headers)
    assert refused.status == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert rate_headers(refused)[:2] == (3, 0)
    assert "inference_per_min" in (await refused.json())["error"]  # the Open Inference Protocol's shape

    port = api.server.app[GRPC_ENDPOINT].port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused_grpc:
            await stub.ModelInfer(
                pb.ModelInferRequest(model_name="nope"), metadata=(("authorization", f"Bearer {tenant.key}"),)
            )
    assert refused_grpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "inference_per_min" in (refused_grpc.value.details() or "")

    prediction = await api.post("/v1/predictions", json={"model": "nope", **INFER}, headers=tenant.headers)
    assert prediction.status == 429  # asynchronous predictions share the inference bucket
    problem = await prediction.json()
    assert (problem["quota"], problem["limit"]) == ("inference_per_min", 3)


async def test_a_key_of_another_tenant_has_its_own_bucket(api, db, tenant, other_tenant):
    set_quota(db, tenant, quotas.CREATES_PER_MIN, 1)
    assert (await api.post("/v1/jobs", json=QUEUED, headers=tenant.headers)).status == 201
    assert (await api.post("/v1/jobs", json=QUEUED, headers=tenant.headers)).status == 429
    assert (await api.post("/v1/jobs", json=QUEUED, headers=other_tenant.headers)).status == 201


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_api_processes(settings: Settings, tmp_path) -> Iterator[list[str]]:
    """Two API servers of the same database, each its own process: their base URLs."""
    processes, urls = [], []
    try:
        for index in range(2):
            port = _free_port()
            own = settings.model_copy(update={"api_port": port, "grpc_enabled": False})
            processes.append(start(["-m", "api"], to_env(own), tmp_path / f"api-{index}.log"))
            urls.append(f"http://127.0.0.1:{port}")

        def up() -> bool:
            for url in urls:
                try:
                    with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=0.5):
                        pass
                except OSError:
                    return False
            return True

        eventually(up, 60, "both API processes to listen")
        yield urls
    finally:
        for process in processes:
            stop(process)


async def test_two_api_processes_share_one_budget(db, tenant, two_api_processes):
    set_quota(db, tenant, quotas.CREATES_PER_MIN, 10)  # a bucket of 10, refilled 1 each 6 s
    statuses: list[list[int]] = [[], []]
    async with aiohttp.ClientSession() as http:
        for attempt in range(24):  # alternate between the two processes
            side = attempt % 2
            async with http.post(two_api_processes[side] + "/v1/jobs", json=QUEUED, headers=tenant.headers) as answer:
                statuses[side].append(answer.status)
                if answer.status == 429:
                    assert int(answer.headers["Retry-After"]) >= 1
                    problem = await answer.json()
                    assert (problem["quota"], problem["limit"]) == ("creates_per_min", 10)
                else:
                    assert answer.status == 201, await answer.text()
                    assert answer.headers["RateLimit-Limit"] == "10"
    accepted = [side.count(201) for side in statuses]
    # one bucket: 10 (11 if a refill came during the run), not 10 per process
    assert 10 <= sum(accepted) <= 11, statuses
    assert all(side >= 1 for side in accepted), statuses
    assert count(db, Job, tenant) == sum(accepted)


def test_concurrent_leases_never_hand_out_more_than_the_bucket(db):
    """Eight threads taking leases of 3 from one shared bucket of 40: 40 tokens in all (the refill of
    40 a minute may add one while they run), each lease granted in whole tokens."""
    from concurrent.futures import ThreadPoolExecutor

    from core.rate_buckets import TAKE, take_params

    key = f"test:{secrets.token_hex(6)}"

    def drain() -> list[int]:
        grants = []
        with db() as session:
            while True:
                granted = int(session.execute(TAKE, take_params(key, 40, 3)).one().granted)
                session.commit()
                if granted == 0:
                    return grants
                grants.append(granted)

    with ThreadPoolExecutor(8) as pool:
        grants = [g for thread in pool.map(lambda _: drain(), range(8)) for g in thread]
    assert 40 <= sum(grants) <= 41, grants
    assert all(1 <= g <= 3 for g in grants)


async def test_a_process_takes_tokens_in_leases_not_one_database_write_per_request(api, db, tenant):
    set_quota(db, tenant, quotas.INFERENCE_PER_MIN, 6000)  # 100 a second: leases of 10 (0.1 s of refill)
    rates = api.server.app[CONTEXT].rates
    for _ in range(40):
        answer = await api.post("/v2/models/nope/infer", json=INFER, headers=tenant.headers)
        assert answer.status == 404
    assert 4 <= rates.leases_taken <= 6  # 40 tokens in leases of 10, the next fetched ahead in the background
    with db() as session:
        key = bucket_key(f"Bearer {tenant.key}", INFERENCE)
        left = session.scalar(select(RateBucket.tokens).where(RateBucket.key == key))
    assert left is not None and left <= 6000 - 40 + 100  # leases left the shared bucket (refill: 100 a second)
