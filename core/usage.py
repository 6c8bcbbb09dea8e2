"""Usage metering: per tenant and hour, in ``usage_hourly``, written in bulk; and the reports read from it.

Measures (``metric``; ``subject`` says what about, ``transport`` how inference arrived):

    inference_requests   answered inference requests     subject: model version id; transport http|grpc|async
    inference_items      rows (first dimension) inferred  same
    inference_seconds    the batch's run time shared out over its rows: inference_ms * rows / batch_size
    job_seconds          a job's wall time * its processes, at its end      subject: job type
    job_gpu_seconds      the same, for jobs that ran on GPUs               subject: job type
    bytes_downloaded     bytes of objects the API handed out for download  subject: file | artifact
    bytes_stored         files + artifacts + checkpoints not deleted: the largest sample of the hour

Counters are added up in memory (``UsageCounters``) and written with one ``INSERT … ON CONFLICT
DO UPDATE`` (``write``) every few seconds: a request costs a dict update, never a database write.
``bytes_stored`` is a gauge, sampled for every tenant at once by one ``INSERT … SELECT``
(``sample_storage``). Workers, which end a job a few times an hour, write their row directly.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from core.models import UsageHour

INFERENCE_REQUESTS = "inference_requests"
INFERENCE_ITEMS = "inference_items"
INFERENCE_SECONDS = "inference_seconds"
JOB_SECONDS = "job_seconds"
JOB_GPU_SECONDS = "job_gpu_seconds"
BYTES_DOWNLOADED = "bytes_downloaded"
BYTES_STORED = "bytes_stored"
METRICS = (
    INFERENCE_REQUESTS,
    INFERENCE_ITEMS,
    INFERENCE_SECONDS,
    JOB_SECONDS,
    JOB_GPU_SECONDS,
    BYTES_DOWNLOADED,
    BYTES_STORED,
)
GAUGES = (BYTES_STORED,)
GROUPS = ("day", "model", "job_type")

Key = tuple[datetime, str, str, str, str]  # hour, tenant, metric, subject, transport


def hour_of(at: datetime) -> datetime:
    return at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def inference_seconds(inference_ms: float | None, rows: int, batch_size: int | None) -> float:
    """This request's share of its batch's run time: the batch's seconds * its rows / the batch's rows."""
    if not inference_ms or rows <= 0:
        return 0.0
    return inference_ms / 1000.0 * rows / max(batch_size or rows, rows)


class UsageCounters:
    """A process's counters since the last write; ``take`` empties them."""

    def __init__(self) -> None:
        self._values: defaultdict[Key, float] = defaultdict(float)
        self._hour, self._hour_ends = datetime.min.replace(tzinfo=UTC), 0.0

    def _now_hour(self) -> datetime:
        """The current hour, recomputed once an hour (a request pays a float compare, not a datetime)."""
        now = time.time()
        if now >= self._hour_ends:
            self._hour = hour_of(datetime.fromtimestamp(now, UTC))
            self._hour_ends = self._hour.timestamp() + 3600
        return self._hour

    def __len__(self) -> int:
        return len(self._values)

    def add(
        self,
        tenant_id: str,
        metric: str,
        value: float,
        subject: str = "",
        transport: str = "",
        at: datetime | None = None,
    ) -> None:
        self._values[(hour_of(at) if at else self._now_hour(), tenant_id, metric, subject, transport)] += value

    def inference(
        self,
        tenant_id: str,
        model_version_id: str,
        transport: str,
        rows: int,
        inference_ms: float | None,
        batch_size: int | None,
        at: datetime | None = None,
    ) -> None:
        """One answered inference request of ``rows`` rows (0 when it failed)."""
        hour = hour_of(at) if at else self._now_hour()
        values = self._values
        values[(hour, tenant_id, INFERENCE_REQUESTS, model_version_id, transport)] += 1
        if rows:
            values[(hour, tenant_id, INFERENCE_ITEMS, model_version_id, transport)] += rows
            seconds = inference_seconds(inference_ms, rows, batch_size)
            values[(hour, tenant_id, INFERENCE_SECONDS, model_version_id, transport)] += seconds

    def take(self) -> list[dict[str, Any]]:
        values, self._values = self._values, defaultdict(float)
        return [
            {"hour": k[0], "tenant_id": k[1], "metric": k[2], "subject": k[3], "transport": k[4], "value": v}
            for k, v in values.items()
        ]

    def give_back(self, rows: list[dict[str, Any]]) -> None:
        """Rows whose write failed: added to what came since, for the next write."""
        for row in rows:
            key = (row["hour"], row["tenant_id"], row["metric"], row["subject"], row["transport"])
            self._values[key] += row["value"]


def upsert(rows: list[dict[str, Any]]) -> Any:
    """One statement adding ``rows`` (distinct keys) to the aggregates; a gauge keeps the hour's largest."""
    statement = insert(UsageHour).values(rows)
    return statement.on_conflict_do_update(
        index_elements=["hour", "tenant_id", "metric", "subject", "transport"],
        set_={
            "value": text(
                "CASE WHEN usage_hourly.metric IN ('bytes_stored') "
                "THEN greatest(usage_hourly.value, excluded.value) ELSE usage_hourly.value + excluded.value END"
            )
        },
    )


WRITE_CHUNK = 5000  # rows per statement: 6 parameters each, under PostgreSQL's 65535


def write(session: Session, rows: list[dict[str, Any]]) -> None:
    for start in range(0, len(rows), WRITE_CHUNK):
        session.execute(upsert(rows[start : start + WRITE_CHUNK]))


def record(
    session: Session,
    tenant_id: str,
    metric: str,
    value: float,
    subject: str = "",
    transport: str = "",
    at: datetime | None = None,
) -> None:
    """Add one measure now, in the caller's transaction (for rare events: a job's end)."""
    counters = UsageCounters()
    counters.add(tenant_id, metric, value, subject, transport, at)
    write(session, counters.take())


# tenants storing nothing get no row (an hour without a sample reads as 0)
STORAGE_SAMPLE = text(
    """
    INSERT INTO usage_hourly (hour, tenant_id, metric, subject, transport, value)
    SELECT hour, id, 'bytes_stored', '', '', stored FROM (
        SELECT date_trunc('hour', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour, t.id,
               coalesce((SELECT sum(f.bytes) FROM files f WHERE f.tenant_id = t.id), 0)
             + coalesce((SELECT sum(a.bytes) FROM artifacts a WHERE a.tenant_id = t.id AND a.deleted_at IS NULL), 0)
               AS stored
        FROM tenants t
    ) sample WHERE stored > 0
    ON CONFLICT (hour, tenant_id, metric, subject, transport)
    DO UPDATE SET value = greatest(usage_hourly.value, excluded.value)
    """
)


def sample_storage(session: Session) -> None:
    """Every tenant's stored bytes now, kept as the hour's sample when it is the largest."""
    session.execute(STORAGE_SAMPLE)


# ---- reports


@dataclass(frozen=True)
class UsageRow:
    key: dict[str, Any]  # what the row is about: {"day"}, {"model", "version", "model_version_id"} or {"job_type"}
    values: dict[str, float]


def _grouping(group_by: str) -> tuple[list[tuple[str, str]], str, str]:
    """([(SQL expression, name)] of the group's key, its joins, a filter on the metrics) for ``group_by``."""
    if group_by == "day":
        return [("to_char(u.hour AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "day")], "", ""
    if group_by == "model":
        return (
            [("u.subject", "model_version_id"), ("m.name", "model"), ("mv.version", "version")],
            "JOIN model_versions mv ON mv.id = u.subject JOIN models m ON m.id = mv.model_id",
            "AND u.metric LIKE 'inference_%'",
        )
    if group_by == "job_type":
        return [("u.subject", "job_type")], "", "AND u.metric LIKE 'job_%'"
    raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")


def report(
    session: Session, start: datetime, end: datetime, group_by: str, tenant_id: str | None = None
) -> list[tuple[str, UsageRow]]:
    """Usage between ``start`` (its hour included) and ``end`` (excluded), per group; per tenant when
    ``tenant_id`` is None. Counters are summed; ``bytes_stored`` is the largest sample in the group."""
    columns, joins, only = _grouping(group_by)
    keys = ", ".join(f"{expression} AS {name}" for expression, name in columns)
    key_names = [name for _, name in columns]
    tenant_filter = "AND u.tenant_id = :tenant" if tenant_id is not None else ""
    statement = text(
        f"""
        SELECT u.tenant_id, {keys}, u.metric, sum(u.value) AS total, max(u.value) AS peak
        FROM usage_hourly u {joins}
        WHERE u.hour >= :start AND u.hour < :end {tenant_filter} {only}
        GROUP BY u.tenant_id, {", ".join(key_names)}, u.metric
        ORDER BY u.tenant_id, {", ".join(key_names)}
        """
    )
    params: dict[str, Any] = {"start": hour_of(start), "end": end}
    if tenant_id is not None:
        params["tenant"] = tenant_id
    grouped: dict[tuple[Any, ...], UsageRow] = {}
    order: list[tuple[str, tuple[Any, ...]]] = []
    for row in session.execute(statement, params).mappings():
        ident = (row["tenant_id"], *(row[k] for k in key_names))
        if ident not in grouped:
            grouped[ident] = UsageRow({k: row[k] for k in key_names}, dict.fromkeys(METRICS, 0.0))
            order.append((row["tenant_id"], ident))
        value = row["peak"] if row["metric"] in GAUGES else row["total"]
        grouped[ident].values[row["metric"]] = float(value)
    return [(tenant, grouped[ident]) for tenant, ident in order]


def totals(rows: list[UsageRow]) -> dict[str, float]:
    """Counters summed over ``rows``; ``bytes_stored`` their largest."""
    out = dict.fromkeys(METRICS, 0.0)
    for row in rows:
        for metric, value in row.values.items():
            out[metric] = max(out[metric], value) if metric in GAUGES else out[metric] + value
    return out


def default_range(now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last 30 days up to the end of the current hour."""
    end = hour_of(now or datetime.now(UTC)) + timedelta(hours=1)
    return end - timedelta(days=30), end


def record_inference(
    session: Session,
    tenant_id: str,
    model_version_id: str,
    transport: str,
    rows: int,
    inference_ms: float | None,
    batch_size: int | None,
) -> None:
    """One inference request, in the caller's transaction (an asynchronous prediction's end)."""
    counters = UsageCounters()
    counters.inference(tenant_id, model_version_id, transport, rows, inference_ms, batch_size)
    write(session, counters.take())
