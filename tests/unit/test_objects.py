"""The API's objects read from ORM rows: the job and prediction objects (webhook bodies and GET
answers alike) checked against literal bodies of the contract, as clients received them before
``core.objects`` existed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

from core.models import Job, ModelReplica, Prediction, WebhookSecret
from core.objects import JobObject, PredictionObject, ReplicaObject, WebhookSecretObject

BASE = "https://api.example"
CREATED = datetime(2025, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _job(**values) -> Job:
    return Job(
        id="job_1",
        tenant_id="ten_1",
        type="training",
        status="running",
        spec={"epochs": 2},
        progress={"step": 3, "total_steps": 4, "loss": 0.5},
        metrics={},
        result=None,
        error=None,
        attempts=1,
        max_attempts=3,
        priority=0,
        webhook=None,
        webhook_events_filter=["start", "completed"],
        metadata_={"team": "vision"},
        created_at=CREATED,
        started_at=CREATED.astimezone(timezone(timedelta(hours=2))) + timedelta(seconds=1),
        finished_at=None,
        **values,
    )


def test_the_job_object_is_the_contracts_body():
    assert JobObject.from_row(_job(), BASE).model_dump(mode="json") == {
        "id": "job_1",
        "object": "job",
        "type": "training",
        "status": "running",
        "spec": {"epochs": 2},
        "progress": {"step": 3, "total_steps": 4, "loss": 0.5, "fraction": 0.75},
        "metrics": {},
        "result": None,
        "error": None,
        "attempts": 1,
        "max_attempts": 3,
        "priority": 0,
        "created_at": "2025-01-02T03:04:05.123456Z",
        "started_at": "2025-01-02T03:04:06.123456Z",  # written in UTC whatever zone the row came in
        "finished_at": None,
        "webhook": None,
        "webhook_events_filter": ["start", "completed"],
        "metadata": {"team": "vision"},
        "urls": {"get": f"{BASE}/v1/jobs/job_1", "cancel": f"{BASE}/v1/jobs/job_1/cancel",
                 "events": f"{BASE}/v1/jobs/job_1/events"},
    }  # fmt: skip


def test_a_job_that_reported_no_progress_is_at_step_0_of_unknown():
    job = _job()
    job.progress = {}
    assert JobObject.from_row(job, BASE).model_dump(mode="json")["progress"] == {
        "step": 0,
        "total_steps": None,
        "fraction": None,
    }


def test_the_webhook_body_and_the_answer_to_get_are_the_same_json():
    job = JobObject.from_row(_job(), BASE)
    assert json.loads(job.model_dump_json(by_alias=True)) == job.model_dump(mode="json")


def test_the_prediction_object_is_the_contracts_body():
    prediction = Prediction(
        id="pred_1",
        status="succeeded",
        output={"outputs": []},
        error=None,
        queue_ms=1.5,
        inference_ms=2,
        webhook="https://hooks.example/p",
        webhook_events_filter=["completed"],
        created_at=CREATED,
        completed_at=CREATED,
    )
    assert PredictionObject.from_row(prediction, "digits", 3, BASE).model_dump(mode="json") == {
        "id": "pred_1",
        "object": "prediction",
        "status": "succeeded",
        "model": "digits",
        "version": 3,
        "output": {"outputs": []},
        "error": None,
        "metrics": {"queue_ms": 1.5, "inference_ms": 2.0},
        "created_at": "2025-01-02T03:04:05.123456Z",
        "completed_at": "2025-01-02T03:04:05.123456Z",
        "webhook": "https://hooks.example/p",
        "webhook_events_filter": ["completed"],
        "urls": {"get": f"{BASE}/v1/predictions/pred_1", "cancel": f"{BASE}/v1/predictions/pred_1/cancel"},
    }


def test_renamed_and_derived_fields_come_from_their_columns():
    replica = ModelReplica(
        server_id="msrv_1", model_version_id="mv_1", status="ready", error=None, updated_at=CREATED,
        memory_bytes=1024, gpu_memory_bytes=2048, in_flight=3, last_used_at=CREATED, evict_reason=None,
    )  # fmt: skip
    assert ReplicaObject.from_row(replica, 2).model_dump(mode="json") == {
        "model_server": "msrv_1",
        "version": 2,
        "status": "ready",
        "error": None,
        "memory_bytes": 1024,
        "gpu_memory_bytes": 2048,
        "in_flight": 3,
        "last_used_at": "2025-01-02T03:04:05.123456Z",
        "evict_reason": None,
        "updated_at": "2025-01-02T03:04:05.123456Z",
    }
    secret = WebhookSecret(secret="whsec_x", rotated_at=CREATED, created_at=CREATED)
    assert WebhookSecretObject.model_validate(secret).model_dump(mode="json") == {
        "object": "webhook_secret",
        "key": "whsec_x",
        "created_at": "2025-01-02T03:04:05.123456Z",
        "rotated_at": "2025-01-02T03:04:05.123456Z",
        "previous_key_valid_until": "2025-01-03T03:04:05.123456Z",
    }
