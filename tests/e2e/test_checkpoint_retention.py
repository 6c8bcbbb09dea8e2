"""Checkpoint retention end to end: a digits training job that checkpoints often keeps only the
newest ``keep_last`` and the best by ``val_accuracy``; the others are gone from S3, marked deleted
in the job's artifacts, and their download answers 410."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from core.artifact_store import ArtifactStore
from core.models import Artifact
from tests.support.api import create_job, job_artifacts, job_events, wait_done

pytestmark = pytest.mark.slow


async def test_only_the_newest_and_the_best_checkpoints_stay(api, tenant, db, settings, training_worker):
    spec = {
        "model": {"arch": "mlp", "hidden": [64]},
        "dataset": {"builtin": "digits"},
        "validation": {"fraction": 0.2},
        "strategy": {"kind": "ddp", "nproc_per_node": 1},
        "hyperparameters": {"epochs": 4, "batch_size": 32, "lr": 0.01, "optimizer": "adam", "seed": 3},
        "checkpoint_every_steps": 20,
        "checkpoint_every_seconds": 0,  # by steps alone
        "checkpoints": {"keep_last": 2, "keep_best": {"metric": "val_accuracy"}},
    }
    response = await create_job(api, tenant, {"type": "training", "spec": spec})
    assert response.status == 201, await response.text()
    job = await wait_done(api, tenant, (await response.json())["id"], timeout_s=600)
    assert job["status"] == "succeeded", job

    history = await job_events(api, tenant, job["id"])
    written = [e["data"] for e in history if e["type"] == "checkpoint"]
    assert len(written) >= 6, written
    assert "val_accuracy" not in written[0]  # step 20 comes before the first validation
    assert all("val_accuracy" in w and "val_loss" in w for w in written[-3:])
    # the best by val_accuracy (the newest of equals), and the two newest
    ranked = [(w["val_accuracy"], i) for i, w in enumerate(written) if "val_accuracy" in w]
    best = written[max(ranked)[1]]["artifact_id"]
    expected = {w["artifact_id"] for w in written[-2:]} | {best}

    artifacts = [a for a in await job_artifacts(api, tenant, job["id"]) if a["kind"] == "checkpoint"]
    assert [a["id"] for a in artifacts] == [w["artifact_id"] for w in written]
    live = {a["id"] for a in artifacts if a["deleted_at"] is None}
    assert live == expected
    deleted = [a for a in artifacts if a["deleted_at"] is not None]
    assert len(deleted) == len(written) - len(expected)
    assert all(a["deleted_reason"].startswith("checkpoint retention") for a in deleted)
    removals = [e["data"]["artifact_id"] for e in history if e["type"] == "artifact_deleted"]
    assert sorted(removals) == sorted(a["id"] for a in deleted)

    store = ArtifactStore(settings)
    with db() as session:
        rows = session.execute(select(Artifact.id, Artifact.storage_key).where(Artifact.job_id == job["id"]))
        keys = {row.id: row.storage_key for row in rows}
    assert all(store.exists(keys[id_]) for id_ in live)
    assert not any(store.exists(keys[a["id"]]) for a in deleted)

    gone = await api.get(f"/v1/artifacts/{deleted[0]['id']}", headers=tenant.headers)
    assert gone.status == 410, await gone.text()
    problem = await gone.json()
    assert problem["deleted_at"] == deleted[0]["deleted_at"]
    assert problem["deleted_reason"] == deleted[0]["deleted_reason"]
    assert (await api.get(f"/v1/artifacts/{best}", headers=tenant.headers)).status == 200
