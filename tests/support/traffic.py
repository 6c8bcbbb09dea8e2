"""Recorded predictions of known latencies and batch sizes: a deployment's traffic without a model
server, for the tests of ``GET /v1/deployments/stats`` and its clients."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from api.prediction_recorder import prediction_row
from core.models import Prediction

LATENCIES_MS = [3.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0]
BATCHES = [1, 2, 2, 4, 4, 4, 8, 8]


def record_traffic(db: Any, tenant_id: str, version_id: str, *extra: dict[str, Any]) -> None:
    """Store, for ``version_id``: one succeeded request per ``LATENCIES_MS``/``BATCHES`` pair in the last
    two minutes, one failed 30 s ago, one (batch 64) ten minutes ago, and ``extra`` rows."""
    now = datetime.now(UTC)
    rows = []
    for i, (ms, batch) in enumerate(zip(LATENCIES_MS, BATCHES, strict=True)):
        started = now - timedelta(seconds=60 + i)
        row = prediction_row(
            tenant_id=tenant_id, model_version_id=version_id, started_at=started, stats={"batch_size": batch}
        )
        rows.append({**row, "completed_at": started + timedelta(milliseconds=ms)})
    failed = prediction_row(
        tenant_id=tenant_id, model_version_id=version_id, started_at=now - timedelta(seconds=30), error={"code": "x"}
    )
    old = prediction_row(
        tenant_id=tenant_id,
        model_version_id=version_id,
        started_at=now - timedelta(minutes=10),
        stats={"batch_size": 64},
    )
    with db() as session:
        session.execute(insert(Prediction), [*rows, failed, old, *extra])
        session.commit()
