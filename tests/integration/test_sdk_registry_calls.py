"""The SDK's registry and housekeeping calls against the real API, PostgreSQL and S3: registering
model versions and deleting one (409 while deployed, a number never given again), cancelling a
queued prediction, deleting a finished job's artifact (409 while the job runs, 410 after), and
rotating the webhook secret. The blocking ``Client`` runs in a thread while the test's loop
serves the API."""

from __future__ import annotations

import asyncio
import secrets

import numpy as np
import pytest

from core import predictions as prediction_service
from core.artifact_store import ArtifactStore
from core.objects import ArtifactObject, DeletedModelVersion, ModelVersionObject, PredictionObject
from maas_client import Client, Conflict, Gone, NotFound
from tests.support.api import create_job, json_request
from tests.support.artifacts import add_job_artifact
from tests.support.onnx_models import tiny_onnx


def base_url(api) -> str:
    return str(api.make_url("")).rstrip("/")


async def test_versions_are_registered_and_deleted_but_not_while_deployed(api, tenant):
    name = f"sdk-{secrets.token_hex(3)}"

    def work() -> tuple[list[ModelVersionObject], DeletedModelVersion, ModelVersionObject]:
        with Client(base_url(api), tenant.key) as maas:
            file = maas.files.upload(tiny_onnx(), purpose="model", filename="tiny.onnx")
            first = maas.models.register(name, file.id, metrics={"accuracy": 0.5})
            second = maas.models.register(name, file.id)
            maas.deployments.deploy(name, 2)
            with pytest.raises(Conflict) as refused:
                maas.models.delete_version(name, 2)
            assert "deployed" in refused.value.problem.detail
            deleted = maas.models.delete_version(name, 1)
            with pytest.raises(NotFound):
                maas.models.get_version(name, 1)
            maas.deployments.undeploy(name)
            third = maas.models.register(name, file.id)
            return [first, second], deleted, third

    (first, second), deleted, third = await asyncio.to_thread(work)
    assert isinstance(first, ModelVersionObject) and (first.version, second.version) == (1, 2)
    assert first.metrics == {"accuracy": 0.5} and first.signature["inputs"][0]["shape"][1] == 4
    assert isinstance(deleted, DeletedModelVersion) and deleted.version == 1 and deleted.deleted
    assert third.version == 3  # the deleted number is not given again


async def test_a_queued_prediction_is_canceled(api, tenant, db):
    name = f"sdk-{secrets.token_hex(3)}"

    def register() -> ModelVersionObject:
        with Client(base_url(api), tenant.key) as maas:
            file = maas.files.upload(tiny_onnx(), purpose="model", filename="tiny.onnx")
            return maas.models.register(name, file.id)

    version = await asyncio.to_thread(register)
    # queued with its message not sent: an inference worker other tests started cannot take it first
    with db() as session:
        created = prediction_service.create_prediction(
            session,
            tenant_id=tenant.id,
            model_version_id=version.id,
            inputs={"inputs": json_request(np.ones((2, 4), np.float32))["inputs"]},
            webhook=None,
            webhook_events_filter=[],
        )
        session.commit()

    def cancel() -> tuple[PredictionObject, PredictionObject]:
        with Client(base_url(api), tenant.key) as maas:
            return maas.predictions.cancel(created.id), maas.predictions.get(created.id)

    canceled, seen = await asyncio.to_thread(cancel)
    assert isinstance(canceled, PredictionObject) and canceled.id == created.id and canceled.status == "canceled"
    assert seen.status == "canceled" and seen.completed_at is not None


async def test_a_finished_jobs_artifact_is_deleted_and_then_gone(api, tenant, db, settings):
    response = await create_job(api, tenant, {"type": "test.unclaimed", "spec": {}})
    assert response.status == 201, await response.text()
    job_id = (await response.json())["id"]
    store = ArtifactStore(settings)
    key = f"jobs/{tenant.id}/{job_id}/notes.txt"
    artifact_id = add_job_artifact(settings, db, tenant.id, job_id, key, "notes.txt", b"notes")

    def work() -> ArtifactObject:
        with Client(base_url(api), tenant.key) as maas:
            with pytest.raises(Conflict):  # the job has not ended
                maas.artifacts.delete(artifact_id)
            maas.jobs.cancel(job_id)
            deleted = maas.artifacts.delete(artifact_id)
            with pytest.raises(Gone):
                maas.artifacts.get(artifact_id)
            return deleted

    deleted = await asyncio.to_thread(work)
    assert isinstance(deleted, ArtifactObject) and deleted.id == artifact_id
    assert deleted.deleted_at is not None and deleted.deleted_reason == "deleted by the tenant"
    assert not store.exists(key)


async def test_the_webhook_secret_rotates(api, tenant):
    def work():
        with Client(base_url(api), tenant.key) as maas:
            before = maas.webhooks.secret()
            rotated = maas.webhooks.rotate()
            return before, rotated, maas.webhooks.secret()

    before, rotated, after = await asyncio.to_thread(work)
    assert before.rotated_at is None and rotated.rotated_at is not None
    assert rotated.key.startswith("whsec_") and rotated.key != before.key
    assert after.key == rotated.key and after.created_at == before.created_at
