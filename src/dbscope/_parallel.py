"""``db.parallel()``'s queries, each in a unit of work of its own, run concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from dbscope._dialects import AWAITED_BY
from dbscope._retry import T
from dbscope._unit_of_work import UnitRun
from dbscope._write_tokens import current_jar

T1 = TypeVar("T1")
T2 = TypeVar("T2")
T3 = TypeVar("T3")
S = TypeVar("S", bound=AsyncSession)
# A query of db.parallel(): given its unit's session (of class S), the awaitable of its result.
Query: TypeAlias = Callable[[S], Awaitable[T]]


async def run_parallel(
    queries: tuple[Query[Any, Any], ...],
    open_unit: Callable[[], UnitRun],
    *,
    writes: bool,
    bound: bool,
) -> tuple[Any, ...]:
    """Each of ``queries`` in a unit ``open_unit`` opens, their results in order; if one
    fails, the others are cancelled and its error raised. ``bound``: the units are savepoints
    of a test's connection."""

    async def run(query: Query[Any, Any]) -> Any:
        async with open_unit() as unit:
            return await query(unit.session)

    if writes:
        # Each task runs in a copy of this context: made here, the write token jar is the one
        # they add to, so that reads after them see their writes.
        current_jar(create=True)
    if bound:
        # Each unit is a savepoint of the test's transaction: savepoints taken at once
        # interleave, and a rollback to one undid another's work ("savepoint does not
        # exist"). One query at a time, in order.
        return tuple([await run(query) for query in queries])
    # Made in a copy of this context naming this task, which awaits them: a write lock it
    # holds (SQLite's) refuses their units at once instead of making them wait for it.
    caller = asyncio.current_task()
    awaited = AWAITED_BY.set((*AWAITED_BY.get(), caller) if caller else AWAITED_BY.get())
    try:
        tasks = [asyncio.ensure_future(run(query)) for query in queries]
    finally:
        AWAITED_BY.reset(awaited)
    try:
        return tuple(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            # Not those cancelled already (gather's, when the caller was): a second cancel
            # cut their sessions' close short, and dead connections went back.
            if not task.done() and not task.cancelling():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
