"""What a user's type checker sees of the public API: the project's mypy (``make lint``, strict)
checks each ``assert_type`` below, and pytest runs the same code against SQLite, so that a
type and the value it describes are checked together.

Before: a retried function's call was typed ``Awaitable`` (``asyncio.create_task`` refused it),
a Database given SQLModel's session class handed out ``AsyncSession`` (``exec()`` unknown),
``db.parallel()`` gave every query's result as ``object``, ``db.stream()`` was an iterator
without ``aclose()``, and ``attempts=2.5`` or a misspelt retry field passed the checker.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, assert_type

import pytest
from sqlalchemy import literal, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelSession

from dbscope import ConfigurationError, Database


async def names(session: AsyncSession) -> list[str]:
    return [str(name) for name in (await session.scalars(text("SELECT 'ann'"))).all()]


async def count(session: AsyncSession) -> int:
    return int(await session.scalar(text("SELECT 2")) or 0)


async def numbers(session: AsyncSession) -> AsyncIterator[int]:
    for number in (1, 2, 3):
        yield number


async def test_each_querys_type_comes_back_from_parallel(sqlite_url: str) -> None:
    async with Database(sqlite_url) as db:
        found, counted = await db.parallel(names, count)
        everything = await db.parallel(count, count, count, count)
    assert_type(found, list[str])
    assert_type(counted, int)
    assert_type(everything, tuple[int, ...])
    assert (found, counted, everything) == (["ann"], 2, (2, 2, 2, 2))


async def test_a_retried_functions_call_is_a_coroutine(sqlite_url: str) -> None:
    async with Database(sqlite_url) as db:

        @db.retry(attempts=2)
        async def doubled(number: int) -> int:
            return 2 * number

        call = assert_type(doubled(21), Coroutine[Any, Any, int])
        async with db.unit_of_work() as unit:
            unit.endpoint = doubled
            assert await asyncio.create_task(call) == 42


async def test_a_stream_is_an_async_generator_to_close(sqlite_url: str) -> None:
    async with Database(sqlite_url) as db:
        stream = db.stream(numbers, read_only=True)
        assert_type(stream, AsyncGenerator[int, None])
        async with contextlib.aclosing(stream) as chunks:
            first = [number async for number in chunks if number < 2]
        assert db.stats().checked_out == 0
    assert first == [1]


async def test_the_checker_refuses_what_the_runtime_refuses(sqlite_url: str) -> None:
    """Each call is refused by mypy (the ``type: ignore`` names the error; an unused one
    fails ``make lint``), and at run time by dbscope's own checks."""
    db = Database(sqlite_url)
    with pytest.raises(ConfigurationError, match="atempts=5"):
        db.retry(atempts=5)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match=r"attempts=2\.5"):
        db.retrying(attempts=2.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="'serializable'"):
        db.session_with(isolation_level="serializable")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="'remote-apply'"):
        async with db.transaction(synchronous_commit="remote-apply"):  # type: ignore[arg-type]
            pass


async def one(session: SQLModelSession) -> int:
    return (await session.exec(select(literal(1)))).one()


def pool_size(db: Database) -> int:
    """A function of any Database: one of SQLModel's sessions is one too."""
    return db.settings.pool_size


async def test_a_database_of_sqlmodels_sessions_hands_out_sqlmodels_sessions(
    sqlite_url: str,
) -> None:
    """With ``session_class=``, every entry point's session is of that class to the checker
    as at run time: ``exec()`` needs no cast."""
    async with Database(sqlite_url, session_class=SQLModelSession) as db:
        assert_type(db, Database[SQLModelSession])
        async with db.transaction() as session:
            assert_type(session, SQLModelSession)
            assert_type(db.current_session(), SQLModelSession)
            assert await one(session) == 1
        async for attempt in db.retrying(attempts=2):
            async with attempt as retried:
                assert await one(assert_type(retried, SQLModelSession)) == 1
        assert await db.parallel(one, one) == (1, 1)
        assert_type(db.session, Callable[..., Awaitable[SQLModelSession]])
        assert isinstance(session, SQLModelSession)
        assert pool_size(db) == pool_size(Database(sqlite_url))
    assert_type(Database(sqlite_url), Database[AsyncSession])
