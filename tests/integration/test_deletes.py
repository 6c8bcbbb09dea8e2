"""Deleting what a tenant stored: files, model versions and finished jobs' artifacts. Each delete
frees the S3 object nothing else references, answers 404 for another tenant's id and 409 naming
what still uses the thing."""

from __future__ import annotations

import secrets

import numpy as np
from sqlalchemy import select

from core.artifact_store import ArtifactStore
from core.ids import new_id
from core.models import File, ModelReplica, ModelServerRecord
from tests.support.api import cancel_job, create_job, deploy, register_version, upload
from tests.support.artifacts import add_job_artifact
from tests.support.datasets import npz
from tests.support.onnx_models import tiny_onnx


def _dataset() -> bytes:
    return npz(X=np.zeros((4, 2), dtype=np.float32))


def _storage_key(db, file_id: str) -> str:
    with db() as session:
        return session.scalar(select(File.storage_key).where(File.id == file_id))


async def _queued_job(api, tenant, type_: str, spec: dict) -> str:
    response = await create_job(api, tenant, {"type": type_, "spec": spec})
    assert response.status == 201, await response.text()
    return (await response.json())["id"]


async def test_a_deleted_file_is_gone_with_its_object_and_no_new_job_can_use_it(api, tenant, db, settings):
    store = ArtifactStore(settings)
    file_id = await upload(api, tenant, _dataset(), "data.npz")
    key = _storage_key(db, file_id)
    assert store.exists(key)

    response = await api.delete(f"/v1/files/{file_id}", headers=tenant.headers)
    assert response.status == 200, await response.text()
    assert await response.json() == {"id": file_id, "object": "file", "deleted": True}
    assert not store.exists(key)
    assert (await api.get(f"/v1/files/{file_id}", headers=tenant.headers)).status == 404
    assert (await api.delete(f"/v1/files/{file_id}", headers=tenant.headers)).status == 404

    response = await create_job(api, tenant, {"type": "test.needs_file", "spec": {"file_id": file_id}})
    assert response.status == 422, await response.text()
    assert (await response.json())["errors"][0]["pointer"] == "/spec/file_id"


async def test_another_tenants_file_is_not_found_and_stays(api, tenant, other_tenant, db, settings):
    file_id = await upload(api, tenant, _dataset(), "data.npz")
    assert (await api.delete(f"/v1/files/{file_id}", headers=other_tenant.headers)).status == 404
    assert (await api.delete("/v1/files/file_unknown", headers=tenant.headers)).status == 404
    assert (await api.get(f"/v1/files/{file_id}", headers=tenant.headers)).status == 200
    assert ArtifactStore(settings).exists(_storage_key(db, file_id))


async def test_a_file_a_queued_job_uses_is_kept_until_the_job_ended(api, tenant, db, settings):
    file_id = await upload(api, tenant, _dataset(), "data.npz")
    job_id = await _queued_job(api, tenant, "test.needs_file", {"file_id": file_id})

    response = await api.delete(f"/v1/files/{file_id}", headers=tenant.headers)
    assert response.status == 409, await response.text()
    problem = await response.json()
    assert problem["job_id"] == job_id and job_id in problem["detail"]
    assert ArtifactStore(settings).exists(_storage_key(db, file_id))

    assert (await cancel_job(api, tenant, job_id)).status == 200
    assert (await api.delete(f"/v1/files/{file_id}", headers=tenant.headers)).status == 200


async def test_a_deployed_version_is_kept_and_a_deleted_number_is_never_reused(api, tenant, other_tenant):
    name = f"del-{secrets.token_hex(3)}"
    await register_version(api, tenant, name, tiny_onnx())
    await register_version(api, tenant, name, tiny_onnx())
    deployment = await deploy(api, tenant, name, 1)

    response = await api.delete(f"/v1/models/{name}/versions/1", headers=tenant.headers)
    assert response.status == 409, await response.text()
    problem = await response.json()
    assert problem["deployment_id"] == deployment["id"] and deployment["id"] in problem["detail"]

    assert (await api.delete(f"/v1/models/{name}/versions/2", headers=other_tenant.headers)).status == 404
    assert (await api.delete(f"/v1/models/{name}/versions/9", headers=tenant.headers)).status == 404
    response = await api.delete(f"/v1/models/{name}/versions/2", headers=tenant.headers)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert (body["object"], body["model"], body["version"], body["deleted"]) == ("model_version", name, 2, True)
    assert (await api.get(f"/v1/models/{name}/versions/2", headers=tenant.headers)).status == 404

    third = await register_version(api, tenant, name, tiny_onnx())
    assert third["version"] == 3
    listed = await (await api.get(f"/v1/models/{name}/versions", headers=tenant.headers)).json()
    assert [v["version"] for v in listed["data"]] == [1, 3]


async def test_a_version_still_draining_on_a_model_server_is_kept_until_it_unloaded(api, tenant, db):
    """Switched away from, version 1 still finishes its requests on a server (its replica row says
    draining): deleting it waits for the unload, which removes the row."""
    name = f"drain-{secrets.token_hex(3)}"
    first = await register_version(api, tenant, name, tiny_onnx())
    await register_version(api, tenant, name, tiny_onnx())
    await deploy(api, tenant, name, 2)
    server_id = new_id("model_server")
    with db() as session:
        session.add(ModelServerRecord(id=server_id, url="http://127.0.0.1:9", hostname="test", pid=1, threads=1))
        session.flush()
        session.add(ModelReplica(server_id=server_id, model_version_id=first["id"], status="draining"))
        session.commit()
    try:
        response = await api.delete(f"/v1/models/{name}/versions/1", headers=tenant.headers)
        assert response.status == 409, await response.text()
        problem = await response.json()
        assert problem["model_servers"] == [server_id]
        assert "still loaded on 1 model server finishing its requests" in problem["detail"]
        assert (await api.get(f"/v1/models/{name}/versions/1", headers=tenant.headers)).status == 200
    finally:
        with db() as session:
            session.delete(session.get_one(ModelServerRecord, server_id))  # its replicas go with it
            session.commit()
    response = await api.delete(f"/v1/models/{name}/versions/1", headers=tenant.headers)
    assert response.status == 200, await response.text()


async def test_deleting_a_version_frees_its_onnx_object_once_its_file_is_gone_too(api, tenant, db, settings):
    store = ArtifactStore(settings)
    name = f"del-{secrets.token_hex(3)}"
    version = await register_version(api, tenant, name, tiny_onnx())
    file_id = version["lineage"]["source"]["file_id"]
    key = _storage_key(db, file_id)

    # the version's artifact is the uploaded file's object: deleting the file keeps it
    assert (await api.delete(f"/v1/files/{file_id}", headers=tenant.headers)).status == 200
    assert store.exists(key)
    response = await api.delete(f"/v1/artifacts/{version['artifact']['id']}", headers=tenant.headers)
    assert response.status == 409, await response.text()
    problem = await response.json()
    assert (problem["model"], problem["version"]) == (name, 1)

    assert (await api.delete(f"/v1/models/{name}/versions/1", headers=tenant.headers)).status == 200
    assert not store.exists(key)
    gone = await api.get(f"/v1/artifacts/{version['artifact']['id']}", headers=tenant.headers)
    assert gone.status == 410


async def test_a_finished_jobs_artifact_is_deleted_once_and_then_gone(api, tenant, other_tenant, db, settings):
    store = ArtifactStore(settings)
    job_id = await _queued_job(api, tenant, "test.unclaimed", {})
    key = f"jobs/{job_id}/report.json"
    artifact_id = add_job_artifact(settings, db, tenant.id, job_id, key, "report.json", b'{"ok": true}')

    response = await api.delete(f"/v1/artifacts/{artifact_id}", headers=tenant.headers)
    assert response.status == 409, await response.text()
    assert (await response.json())["job_id"] == job_id
    assert store.exists(key)

    assert (await cancel_job(api, tenant, job_id)).status == 200
    assert (await api.delete(f"/v1/artifacts/{artifact_id}", headers=other_tenant.headers)).status == 404
    response = await api.delete(f"/v1/artifacts/{artifact_id}", headers=tenant.headers)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["id"] == artifact_id and body["deleted_reason"] == "deleted by the tenant" and body["deleted_at"]
    assert not store.exists(key)

    gone = await api.get(f"/v1/artifacts/{artifact_id}", headers=tenant.headers)
    assert gone.status == 410
    again = await api.delete(f"/v1/artifacts/{artifact_id}", headers=tenant.headers)
    assert again.status == 410
    assert (await again.json())["deleted_reason"] == "deleted by the tenant"
