"""The tenant's usage: ``GET /v1/usage?from=&to=&group_by=day|model|job_type``, read from the hourly
aggregates (``core.usage``). Counts of the last few seconds may still be in an API process's
memory (written every ``usage_flush_s``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, model_validator

from api.context import context
from api.endpoints import Call, Endpoints
from core import usage as usage_service
from core.spec_kit import StrictModel

usage = Endpoints("usage")
MAX_RANGE = timedelta(days=366)
# what the report's hour arithmetic and PostgreSQL's timestamps both hold, with room to spare
EARLIEST, LATEST = datetime(2000, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


class UsageQuery(StrictModel):
    from_: AwareDatetime | None = Field(
        default=None, alias="from", description="RFC 3339; its hour is included (default: 30 days before `to`)"
    )
    to: AwareDatetime | None = Field(default=None, description="RFC 3339, excluded (default: the end of this hour)")
    group_by: Literal["day", "model", "job_type"] = Field(
        default="day", description="rows per UTC day, per model version (inference), or per job type (jobs)"
    )

    @model_validator(mode="after")
    def _range(self) -> UsageQuery:
        for name, value in (("from", self.from_), ("to", self.to)):
            if value is not None and not EARLIEST <= value <= LATEST:
                raise ValueError(f"`{name}` must be between {EARLIEST:%Y-%m-%d} and {LATEST:%Y-%m-%d}")
        start, end = self.span()
        if start >= end:
            raise ValueError("`from` must be before `to`")
        if end - start > MAX_RANGE:
            raise ValueError(f"at most {MAX_RANGE.days} days at once")
        return self

    def span(self) -> tuple[datetime, datetime]:
        default_start, default_end = usage_service.default_range()
        end = self.to or default_end
        return self.from_ or end - (default_end - default_start), end


class UsageMeasures(BaseModel):
    inference_requests: int = Field(description="inference requests answered (REST, gRPC and asynchronous)")
    inference_items: int = Field(description="rows inferred (the first dimension of the inputs)")
    inference_seconds: float = Field(description="model compute: each batch's run time shared out over its rows")
    job_seconds: float = Field(description="job compute: wall time times processes, per attempt")
    job_gpu_seconds: float = Field(description="the part of job_seconds that ran on GPUs")
    bytes_downloaded: int = Field(description="bytes of files and artifacts whose download the API handed out")
    bytes_stored: int = Field(description="files, artifacts and checkpoints stored: the largest hourly sample")


class UsageRowObject(UsageMeasures):
    group: dict[str, str | int] = Field(
        description="what the row is about: `{day}` (UTC, YYYY-MM-DD), `{model, version, model_version_id}` "
        "(inference measures only) or `{job_type}` (job measures only)"
    )


class UsageReport(BaseModel):
    object: str = Field(default="usage", description="always `usage`")
    from_: datetime = Field(alias="from", description="the first hour counted")
    to: datetime = Field(description="the end of the range (excluded)")
    group_by: str = Field(description="how `data` is grouped")
    data: list[UsageRowObject] = Field(description="one row per group, in order")
    total: UsageMeasures = Field(description="the whole range")

    model_config = {"populate_by_name": True}


def measures(values: dict[str, float]) -> dict[str, float | int]:
    counts = ("inference_requests", "inference_items", "bytes_downloaded", "bytes_stored")
    return {
        name: round(value) if name in counts else round(value, 3)
        for name, value in values.items()
        if name in UsageMeasures.model_fields
    }


@usage.get(
    "/v1/usage",
    summary="This tenant's usage over a range, per day, model version or job type",
    query=UsageQuery,
    response=UsageReport,
)
async def get_usage(request: web.Request, call: Call[None, UsageQuery]) -> UsageReport:
    ctx = context(request)
    start, end = call.query.span()
    group_by = call.query.group_by

    def read(session) -> tuple[list[usage_service.UsageRow], list[usage_service.UsageRow]]:
        def rows_by(group: str) -> list[usage_service.UsageRow]:
            return [row for _, row in usage_service.report(session, start, end, group, call.tenant_id)]

        rows = rows_by(group_by)
        return rows, rows if group_by == "day" else rows_by("day")

    async with ctx.db() as session:
        rows, days = await session.run_sync(read)
    return UsageReport(
        **{"from": usage_service.hour_of(start)},
        to=end.astimezone(UTC),
        group_by=group_by,
        data=[UsageRowObject(group=row.key, **measures(row.values)) for row in rows],
        total=UsageMeasures(**measures(usage_service.totals(days))),
    )
