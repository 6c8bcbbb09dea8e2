"""The prediction recorder's buffer: order, retries in front, and a cap that drops the oldest."""

from __future__ import annotations

from datetime import UTC, datetime

from api.prediction_recorder import RecordBuffer, prediction_row


def rows(*ids: int) -> list[dict[str, int]]:
    return [{"n": i} for i in ids]


def test_rows_leave_in_arrival_order_in_slices():
    buffer = RecordBuffer(max_rows=10)
    for row in rows(1, 2, 3):
        buffer.add(row)
    assert buffer.take(2) == rows(1, 2)
    assert buffer.take(5) == rows(3)
    assert buffer.take(5) == [] and len(buffer) == 0


def test_a_failed_insert_puts_its_rows_back_in_front():
    buffer = RecordBuffer(max_rows=10)
    for row in rows(1, 2, 3):
        buffer.add(row)
    taken = buffer.take(2)
    buffer.add({"n": 4})
    buffer.give_back(taken)
    assert buffer.take(10) == rows(1, 2, 3, 4)


def test_past_the_cap_the_oldest_rows_are_dropped_and_counted():
    buffer = RecordBuffer(max_rows=3)
    for row in rows(1, 2, 3, 4, 5):
        buffer.add(row)
    assert buffer.dropped == 2
    taken = buffer.take(3)
    buffer.add({"n": 6})
    buffer.give_back(taken)  # 4 rows for 3 places: the oldest goes
    assert buffer.take(10) == rows(4, 5, 6) and buffer.dropped == 3


def test_prediction_rows_are_final_and_carry_their_batch():
    started = datetime.now(UTC)
    ok = prediction_row(
        tenant_id="t",
        model_version_id="mv",
        started_at=started,
        stats={"queue_ms": 1.5, "inference_ms": 2.0, "batch_id": "b-1", "batch_size": 4},
    )
    assert ok["status"] == "succeeded" and ok["error"] is None and not ok["is_async"]
    assert (ok["batch_id"], ok["batch_size"], ok["created_at"]) == ("b-1", 4, started)
    assert ok["id"].startswith("pred_") and ok["completed_at"] >= started
    failed = prediction_row(tenant_id="t", model_version_id="mv", started_at=started, error={"code": "queue_full"})
    assert failed["status"] == "failed" and failed["batch_id"] is None and failed["queue_ms"] is None
