"""The client CLI's pure pieces: what the live bar shows from a job's events, and the login file's mode."""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from pathlib import Path

from cli import credentials
from cli.follow import JobView
from core.objects import JobEventObject


def event(type_: str, data: dict) -> JobEventObject:
    return JobEventObject(id="evt_1", created_at=datetime.now(UTC), level="info", type=type_, message="", data=data)


def test_the_bar_shows_step_total_and_the_training_values_as_they_come() -> None:
    view = JobView()
    view.apply(event("status", {"status": "running"}))
    view.apply(event("progress", {"step": 13, "total_steps": 660, "loss": 1.955, "epoch": 0.2955}))
    view.apply(
        event("progress", {"step": 26, "total_steps": 660, "loss": 0.98, "accuracy": 0.808, "samples_per_s": 6050.7})
    )
    assert (view.step, view.total, view.status) == (26, 660, "running")
    assert view.stats() == "epoch 0.2955  loss 0.98  accuracy 0.808  6,051 samples/s"
    view.apply(event("progress", {"step": 27, "total_steps": 660, "val_loss": 0.5}))
    assert "val_loss" not in view.stats() and view.step == 27


def test_login_writes_its_file_for_the_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "maas" / "credentials.json"
    path.parent.mkdir()
    path.write_text("{}")
    path.chmod(0o644)  # an older file: its mode is tightened too
    credentials.save("http://127.0.0.1:8080", "maas_ab_secret", path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert credentials.load(path) == credentials.Credentials("http://127.0.0.1:8080", "maas_ab_secret")
    assert credentials.load(tmp_path / "missing.json") == credentials.Credentials(None, None)
