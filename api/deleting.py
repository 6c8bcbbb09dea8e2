"""Running a delete of ``core.deletion`` for a route: the rows change and commit first, then the
objects nothing references any more leave the store (a failure there is a logged orphan)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.context import ApiContext
from api.problems import Problem, not_found
from core.deletion import NotFound, StillInUse, remove_objects


async def run_delete(ctx: ApiContext, what: str, ident: str, work: Callable[[Session], list[str]]) -> None:
    """Run ``work`` (a ``core.deletion`` function) in a transaction, commit, then remove its objects:
    404 for nothing of the tenant's, 409 naming what still uses it."""
    try:
        async with ctx.db() as session:
            keys = await session.run_sync(work)
            await session.commit()
    except NotFound:
        raise not_found(what, ident) from None
    except StillInUse as exc:
        raise Problem(409, exc.detail, **exc.extra) from None
    except IntegrityError:  # a row made meanwhile refers to it (a deployment of the version…)
        raise Problem(409, f"{what} {ident!r} came into use while it was being deleted; try again") from None
    await asyncio.to_thread(remove_objects, ctx.store, keys, f"{what} {ident}")
