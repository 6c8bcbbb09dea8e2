"""Cursor pages for every list endpoint: ``?limit=&after=`` → ``{data, has_more, next_cursor}``.

Ids are time-ordered (``core.ids``), so a page is "the ``limit`` newest rows whose id
is below the cursor"; a row created while a client pages never shifts the pages.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field
from sqlalchemy import Select

from core.spec_kit import StrictModel

T = TypeVar("T")


class PageQuery(StrictModel):
    limit: int = Field(default=20, ge=1, le=100, description="most items in the page")
    after: str | None = Field(default=None, max_length=40, description="a `next_cursor`: the page after it")


class Page(BaseModel, Generic[T]):
    object: str = Field(default="list", description="always `list`")
    data: list[T] = Field(description="the items, newest first")
    has_more: bool = Field(description="more items follow this page")
    next_cursor: str | None = Field(description="pass as `after` for the next page; null on the last page")


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
