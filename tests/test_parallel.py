"""Parallel reads: each query its own unit of work and connection, and one session never shared.

``db.parallel(q1, q2, ...)`` runs every ``q(session)`` in a unit of its own, concurrently. An
``asyncio.Barrier`` that every query waits on proves they overlap: it opens only when all of
them hold their connection at once. Sharing one session between tasks is the misuse that
``db.parallel`` exists to avoid: it must fail, and must not keep a connection checked out.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import pytest
from sqlalchemy import Integer, event, literal, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import Database, SessionSharedError, testing
from tests.helpers import Tables, count_rows

PARALLEL = 10
INSERT = text("INSERT INTO par_rows (value) VALUES (1)")


class Boom(Exception):
    """The error of the query that fails."""


@pytest.fixture
async def par_rows(tables: Tables) -> None:
    """An empty ``par_rows`` table for the test."""
    await tables.create("par_rows", "value INTEGER NOT NULL")


def overlapping_query(number: int, barrier: asyncio.Barrier) -> Callable[[AsyncSession], Any]:
    """A query that selects ``number``, then waits until all queries hold a connection."""

    async def query(session: AsyncSession) -> int:
        value = int(await session.scalar(select(literal(number, Integer))) or 0)
        async with asyncio.timeout(5):
            await barrier.wait()
        return value

    return query


async def test_ten_parallel_queries_succeed_on_a_cold_pool_with_pre_ping(
    database_url: str,
) -> None:
    """Ten overlapping queries on a fresh pool of ten all answer, each on its own connection."""
    options: dict[str, Any] = {"pool_size": PARALLEL, "max_overflow": 0, "pool_pre_ping": True}
    async with Database(database_url, pool_timeout=5, **options) as db:
        barrier = asyncio.Barrier(PARALLEL)
        with anyio.fail_after(10):
            results = await db.parallel(*(overlapping_query(n, barrier) for n in range(PARALLEL)))
        stats = db.stats()
    assert results == tuple(range(PARALLEL))
    assert stats.checked_out == 0
    assert stats.checked_in == PARALLEL  # ten connections were open at once


async def test_parallel_results_come_back_in_argument_order(database_url: str) -> None:
    """Queries that finish in reverse order still give their results in argument order."""

    def finishing_after(delay: float, value: int) -> Callable[[AsyncSession], Awaitable[int]]:
        async def query(session: AsyncSession) -> int:
            await session.execute(text("SELECT 1"))
            await asyncio.sleep(delay)
            return value

        return query

    async with Database(database_url) as db:
        results = await db.parallel(
            finishing_after(0.15, 1), finishing_after(0.1, 2), finishing_after(0, 3)
        )
    assert results == (1, 2, 3)


async def test_a_failing_query_cancels_the_others_and_its_error_propagates(
    database_url: str,
) -> None:
    """One query raises: the waiting ones are cancelled, the error arrives, nothing is held."""
    cancelled: list[int] = []

    def waiting_forever(number: int) -> Callable[[AsyncSession], Awaitable[None]]:
        async def query(session: AsyncSession) -> None:
            await session.execute(text("SELECT 1"))
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(number)
                raise

        return query

    async def failing(session: AsyncSession) -> None:
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(0.1)
        raise Boom("one of the parallel queries failed")

    async with Database(database_url) as db:
        with anyio.fail_after(5), pytest.raises(Boom):
            await db.parallel(waiting_forever(1), failing, waiting_forever(2))
        assert db.stats().checked_out == 0
    assert sorted(cancelled) == [1, 2]


@pytest.mark.usefixtures("par_rows")
async def test_parallel_writes_are_not_kept_by_default(database_url: str) -> None:
    """Parallel units are read-only unless asked: a write is refused or rolled back."""

    async def write(session: AsyncSession) -> None:
        await session.execute(INSERT)

    async with Database(database_url) as db:
        with contextlib.suppress(DBAPIError):  # PostgreSQL refuses the write outright
            await db.parallel(write, write)
    assert await count_rows(database_url, "par_rows") == 0


@pytest.mark.usefixtures("par_rows")
async def test_parallel_writes_commit_when_not_read_only(database_url: str) -> None:
    """With read_only=False every unit commits its own write."""

    async def write(session: AsyncSession) -> None:
        await session.execute(INSERT)

    async with Database(database_url) as db:
        await db.parallel(write, write, read_only=False)
    assert await count_rows(database_url, "par_rows") == 2


@pytest.mark.usefixtures("par_rows")
async def test_parallel_units_in_a_rolled_back_test_run_one_after_another(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bound to a test's connection, parallel units are savepoints of the test's transaction:
    run one at a time, each keeps its write until the test ends, and none fails to close
    (at once, their savepoints interleaved: "savepoint sa_savepoint_3 does not exist")."""
    test_database = Database(database_url)

    async def write(session: AsyncSession) -> int:
        await session.execute(INSERT)
        return int(await session.scalar(text("SELECT count(*) FROM par_rows")) or 0)

    db = Database("postgresql+asyncpg://app@127.0.0.1:9/never")  # the app's, never reached
    async with test_database, testing.rolled_back(db, test_database.engine):
        with caplog.at_level("WARNING", logger="dbscope"):
            seen = await db.parallel(write, write, write, read_only=False)
    assert seen == (1, 2, 3)
    assert [record.getMessage() for record in caplog.records] == []
    assert await count_rows(database_url, "par_rows") == 0


async def test_gathering_two_queries_on_one_session_fails_and_leaves_nothing_checked_out(
    database_url: str,
) -> None:
    """asyncio.gather on one session raises, and once the unit ended no connection is held."""
    slow = {
        "postgresql": "SELECT pg_sleep(0.1)",
        "mysql": "SELECT SLEEP(0.1)",
        "sqlite": "SELECT 1",
    }
    # SQLAlchemy sees the misuse when the second task arrives while the first is still
    # getting its connection; a ping at checkout (pool_pre_ping_after=0) keeps it there long
    # enough. Without an await there, the drivers' own locks serialize the two queries.
    options: dict[str, Any] = {"pool_size": 2, "max_overflow": 0, "pool_pre_ping_after": 0}
    async with Database(database_url, **options) as db:
        async with db.transaction() as session:  # a connection to ping at the next checkout
            await session.execute(text("SELECT 1"))
        query = text(slow[db.url.get_backend_name()])
        tasks: list[asyncio.Future[Any]] = []
        sessions: list[AsyncSession] = []

        async def gather_on_one_session() -> None:
            async with db.transaction() as session:
                sessions.append(session)
                tasks.extend(asyncio.ensure_future(session.execute(query)) for _ in range(2))
                await asyncio.gather(*tasks)

        with pytest.raises(SessionSharedError, match=r"db\.parallel"):
            await gather_on_one_session()
        _, pending = await asyncio.wait(tasks, timeout=1)  # the query left behind ends
        stats = db.stats()
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)  # retrieved: nothing reported
        print(f"\n[{db.url.get_driver_name()}] after the misuse: {stats}, {len(pending)} pending")
        await sessions[0].close()  # hand back whatever the misuse kept, before the pool is disposed
    assert stats.checked_out == 0


class ParBase(DeclarativeBase):
    """The ORM model of the test below."""


class ParRow(ParBase):
    """A row of ``par_rows``."""

    __tablename__ = "par_rows"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[int]


async def test_objects_a_parallel_read_loaded_stay_readable_after_its_unit(
    db: Database, tables: Tables
) -> None:
    """A read-only unit ends without expiring what it loaded: its rows are read afterwards."""
    await tables.create_all(ParBase.metadata)
    async with db.transaction() as session:
        session.add_all([ParRow(value=7), ParRow(value=8)])

    async def rows(session: AsyncSession) -> list[ParRow]:
        return list(await session.scalars(select(ParRow).order_by(ParRow.value)))

    (loaded,) = await db.parallel(rows)
    assert [row.value for row in loaded] == [7, 8]


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_a_cancelled_parallel_gives_back_no_dead_connection(database_url: str) -> None:
    """The caller cancelled mid-query (a request timeout): gather cancels the queries, and
    parallel() must not cancel them again while their sessions close, which cut the close
    short and checked closed connections back into the pool (6 runs in 10 here)."""
    sleep = text("SELECT pg_sleep(0.5)")
    closed_at_checkin: list[bool] = []

    def check(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            closed_at_checkin.append(dbapi_connection.driver_connection.is_closed())

    async def slow(session: AsyncSession) -> object:
        return await session.scalar(sleep)

    async def alive(session: AsyncSession) -> object:
        return await session.scalar(text("SELECT 1"))

    async with Database(database_url, pool_size=3, max_overflow=0) as db:
        event.listen(db.engine.sync_engine, "checkin", check)
        for step in range(10):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.05 + step * 0.02):
                    await db.parallel(slow, slow, slow)
        # The cancelled ones' connections were dropped (checked in as None); these come back.
        assert await db.parallel(alive, alive, alive) == (1, 1, 1)
        assert db.stats().checked_out == 0
    assert closed_at_checkin.count(False) >= 3
    assert not any(closed_at_checkin)
