"""Tenant quotas against the real API and PostgreSQL: each capacity quota refuses with a 409 (413 for an
upload's size) problem that names the quota, its limit and the use; nothing is created; the counts
follow cancels, failures and deletes; concurrent creates cannot both take the last slot.

Jobs here are of ``test.unclaimed`` (a queue no worker consumes), so they stay queued.
"""

from __future__ import annotations

import asyncio
import secrets

from sqlalchemy import func, select

from core import jobs as job_service
from core import quotas
from core.models import File, Job
from tests.support.api import deploy, register_version, upload_raw
from tests.support.onnx_models import tiny_onnx

QUEUED = {"type": "test.unclaimed", "spec": {}}
CSV = b"a,b\n1,2\n3,4\n"  # 12 bytes


async def create_job(api, tenant, body: dict) -> dict:
    response = await api.post("/v1/jobs", json=body, headers=tenant.headers)
    assert response.status == 201, await response.text()
    return await response.json()


def set_quota(db, tenant, name: str, value: int | None) -> None:
    with db() as session:
        quotas.set_quota(session, tenant.id, name, value)
        session.commit()


def count(db, model, tenant) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(model).where(model.tenant_id == tenant.id)) or 0


async def over_quota(response, status: int, quota: str, limit: int, used: int) -> dict:
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    problem = await response.json()
    assert (problem["quota"], problem["limit"], problem["used"]) == (quota, limit, used), problem
    assert problem["type"].endswith("/quota-exceeded")
    assert quota in problem["detail"]
    return problem


async def test_queued_jobs_past_the_quota_are_refused_and_a_cancel_frees_a_slot(api, db, tenant, settings):
    set_quota(db, tenant, "queued_jobs", 2)
    first = await create_job(api, tenant, QUEUED)
    await create_job(api, tenant, QUEUED)
    refused = await api.post("/v1/jobs", json=QUEUED, headers=tenant.headers)
    await over_quota(refused, 409, "queued_jobs", 2, 2)
    assert count(db, Job, tenant) == 2  # nothing created

    canceled = await api.post(f"/v1/jobs/{first['id']}/cancel", headers=tenant.headers)
    assert canceled.status == 200
    third = await create_job(api, tenant, QUEUED)
    with db() as session:  # a failure frees its slot too
        job_service.transition(session, third["id"], "failed", settings, message="failed for the test")
        session.commit()
    await create_job(api, tenant, QUEUED)
    await over_quota(await api.post("/v1/jobs", json=QUEUED, headers=tenant.headers), 409, "queued_jobs", 2, 2)


async def test_a_per_type_queued_quota_limits_that_type_only(api, db, tenant):
    set_quota(db, tenant, quotas.queued_jobs("test.unclaimed"), 1)
    await create_job(api, tenant, QUEUED)
    refused = await api.post("/v1/jobs", json=QUEUED, headers=tenant.headers)
    await over_quota(refused, 409, "queued_jobs_test.unclaimed", 1, 1)
    other = {"type": "test.needs_file", "spec": {"file_id": await _file(api, tenant)}}
    assert (await api.post("/v1/jobs", json=other, headers=tenant.headers)).status == 201


async def test_concurrent_creates_cannot_both_take_the_last_slot(api, db, tenant):
    set_quota(db, tenant, "queued_jobs", 3)
    await create_job(api, tenant, QUEUED)
    await create_job(api, tenant, QUEUED)
    answers = await asyncio.gather(*(api.post("/v1/jobs", json=QUEUED, headers=tenant.headers) for _ in range(6)))
    assert sorted(a.status for a in answers) == [201] + [409] * 5
    assert count(db, Job, tenant) == 3


async def test_another_tenants_jobs_do_not_count(api, db, tenant, other_tenant):
    set_quota(db, tenant, "queued_jobs", 1)
    await create_job(api, other_tenant, QUEUED)
    await create_job(api, tenant, QUEUED)
    await over_quota(await api.post("/v1/jobs", json=QUEUED, headers=tenant.headers), 409, "queued_jobs", 1, 1)


async def _file(api, tenant, data: bytes = CSV) -> str:
    response = await upload_raw(api, tenant, data, f"d-{secrets.token_hex(3)}.csv")
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def test_stored_bytes_refuse_an_upload_that_would_pass_them_and_a_delete_frees_them(api, db, tenant):
    set_quota(db, tenant, "stored_bytes", 20)
    first = await _file(api, tenant)
    refused = await upload_raw(api, tenant, CSV, "second.csv")
    await over_quota(refused, 409, "stored_bytes", 20, 12)
    assert count(db, File, tenant) == 1
    assert (await api.delete(f"/v1/files/{first}", headers=tenant.headers)).status == 200
    await _file(api, tenant)


async def test_a_job_is_refused_while_the_tenant_stores_more_than_its_quota(api, db, tenant):
    await _file(api, tenant)
    set_quota(db, tenant, "stored_bytes", 5)  # lowered below what is stored
    await over_quota(await api.post("/v1/jobs", json=QUEUED, headers=tenant.headers), 409, "stored_bytes", 5, 12)
    assert count(db, Job, tenant) == 0


async def test_an_upload_larger_than_the_upload_quota_is_413_naming_it(api, db, tenant):
    set_quota(db, tenant, "upload_bytes", 10)
    refused = await upload_raw(api, tenant, CSV, "big.csv")
    await over_quota(refused, 413, "upload_bytes", 10, 12)

    async def chunks():  # no Content-Length: refused while streaming
        yield CSV[:6]
        yield CSV[6:]

    await over_quota(await upload_raw(api, tenant, chunks(), "big.csv"), 413, "upload_bytes", 10, 12)
    assert count(db, File, tenant) == 0


async def test_deployments_and_replicas_quotas(api, db, tenant):
    names = [f"q-{secrets.token_hex(3)}" for _ in range(3)]
    for name in names:
        await register_version(api, tenant, name, tiny_onnx())
    set_quota(db, tenant, "deployments", 1)
    await deploy(api, tenant, names[0], 1)
    await deploy(api, tenant, names[0], 1)  # changing a deployment takes no new slot
    refused = await api.put(f"/v1/models/{names[1]}/deployment", json={"version": 1}, headers=tenant.headers)
    await over_quota(refused, 409, "deployments", 1, 1)

    set_quota(db, tenant, "deployments", 5)
    set_quota(db, tenant, "replicas", 1)  # each deployment asks for max_replicas (default 1)
    refused = await api.put(f"/v1/models/{names[2]}/deployment", json={"version": 1}, headers=tenant.headers)
    await over_quota(refused, 409, "replicas", 1, 1)
    with db() as session:
        assert quotas.deployment_count(session, tenant.id) == 1  # nothing created

    assert (await api.delete(f"/v1/models/{names[0]}/deployment", headers=tenant.headers)).status in (200, 204)
    await deploy(api, tenant, names[2], 1)


def test_effective_quota_order_tenant_row_then_running_jobs_row_then_setting(db, tenant, settings):
    with db() as session:
        assert quotas.effective_quota(session, tenant.id, "running_jobs_training", settings) == (
            settings.quota_running_jobs
        )
        quotas.set_quota(session, tenant.id, "running_jobs", 7)
        assert quotas.effective_quota(session, tenant.id, quotas.running_jobs("training"), settings) == 7
        quotas.set_quota(session, tenant.id, "running_jobs_training", 2)
        assert quotas.effective_quota(session, tenant.id, quotas.running_jobs("training"), settings) == 2
        assert quotas.effective_quota(session, tenant.id, quotas.running_jobs("compression"), settings) == 7
        quotas.set_quota(session, tenant.id, "running_jobs_training", None)
        assert quotas.effective_quota(session, tenant.id, quotas.running_jobs("training"), settings) == 7
        session.rollback()
