"""Cursor pages for every list endpoint: ``?limit=&after=`` → ``{data, has_more, next_cursor}``.

Ids are time-ordered (``core.ids``), so a page is "the ``limit`` newest rows whose id
is below the cursor"; a row created while a client pages never shifts the pages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import Select

T = TypeVar("T")


class PageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=20, ge=1, le=100)
    after: str | None = Field(default=None, max_length=40)


class Page(BaseModel, Generic[T]):
    object: str = "list"
    data: list[T]
    has_more: bool
    next_cursor: str | None


def page_statement(statement: Select, id_column: Any, query: PageQuery) -> Select:
    if query.after:
        statement = statement.where(id_column < query.after)
    return statement.order_by(id_column.desc()).limit(query.limit + 1)


def make_page(
    rows: Sequence[Any], query: PageQuery, render: Callable[[Any], T], cursor: Callable[[Any], str] = lambda r: r.id
) -> Page[T]:
    has_more = len(rows) > query.limit
    rows = rows[: query.limit]
    return Page[T](
        data=[render(r) for r in rows], has_more=has_more, next_cursor=cursor(rows[-1]) if has_more else None
    )
