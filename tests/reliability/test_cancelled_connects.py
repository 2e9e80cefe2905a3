"""A unit cancelled while its new connection is being set up leaves nothing behind.

The pool runs the ``connect`` event's listeners (dbscope's, SQLAlchemy's, the app's: a
``PRAGMA``, a ``SET``) on each new connection before any unit has it. A cancel that lands
there makes SQLAlchemy terminate the connection at once, without the ``close`` event dbscope
bounds closes by. On SQLite, with anyio's cancel scope (which cancels again at each await)
and aiosqlite's thread still busy, the terminate stopped the thread before its own graceful
close was done, and left that close's task pending for ever: "Task was destroyed but it is
pending!" each time, found by cancelling units at random moments under CPU load.

A cancel that lands while a PostgreSQL driver opens the connection ends the unit at once and
leaves the connect to finish alone (``_dialects.driver.ClosedIfCancelled``): ``dispose()``
waits for its own Database's, or the app's event loop could end with them running. So does
one while aiosqlite's thread opens the file: aiosqlite dropped the sqlite3 connection of a
connect cancelled there unclosed, to the garbage collector (on Python 3.13, a ResourceWarning).
"""

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any, ClassVar

import anyio
import pytest
from sqlalchemy import event, text

from dbscope import Database
from dbscope._dialects.aiosqlite_driver import EndsItsTransactions
from tests import helpers
from tests.cancel_points import Point, Stepped, nothing_reported, reach
from tests.new_connections import new_connection_at_each_checkout

CANCELS = 5
POLLS = 500
# A setup statement that keeps the connection busy for a while, on each backend: the cancel
# lands before it ends.
SLOW_SETUP = {
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n"
    " WHERE i < 300000) SELECT count(*) FROM n",
    "postgresql": "SELECT pg_sleep(0.05)",
    "mysql": "SELECT SLEEP(0.05)",
}


class SlowSetup:
    """A ``connect`` listener that runs a slow statement, and counts the runs a cancel cut."""

    def __init__(self, statement: str) -> None:
        self.statement = statement
        self.started = asyncio.Event()
        self.cut_short = 0

    def __call__(self, dbapi_connection: Any, record: Any) -> None:
        self.started.set()
        try:
            # aiosqlite's cursor() waits for its thread: the cancel lands there, the thread
            # idle, and SQLAlchemy's terminate raced its own graceful close.
            cursor = dbapi_connection.cursor()
            cursor.execute(self.statement)
            cursor.fetchall()
            cursor.close()
        except asyncio.CancelledError:
            self.cut_short += 1
            raise


async def test_a_cancel_scope_in_a_connect_listener_leaves_nothing_behind(
    database_url: str,
) -> None:
    """anyio's cancel scope cancels units while a connect listener runs on their new
    connection: each cancel lands there, nothing stays checked out, and nothing is reported
    (no task left pending, no warning)."""
    async with Database(database_url, pool_size=1, max_overflow=0) as db:
        # Every checkout opens a connection of its own, set up by the listener.
        await new_connection_at_each_checkout(db)
        setup = SlowSetup(SLOW_SETUP[db.engine.dialect.name])
        event.listen(db.engine.sync_engine, "connect", setup)
        with nothing_reported():
            for _ in range(CANCELS):
                setup.started.clear()
                async with anyio.create_task_group() as group:

                    async def cancel_once_set_up_begins() -> None:
                        await setup.started.wait()
                        group.cancel_scope.cancel()

                    group.start_soon(cancel_once_set_up_begins)
                    async with db.transaction() as session:
                        await session.execute(text("SELECT 1"))
                    pytest.fail("the unit ran on after its cancel")
            event.remove(db.engine.sync_engine, "connect", setup)
            async with db.transaction() as session:  # the pool still serves
                assert await session.scalar(text("SELECT 1")) == 1
        assert setup.cut_short == CANCELS
        assert db.stats().checked_out == 0


def driver_connects() -> list[asyncio.Task[Any]]:
    """The tasks of this loop running a driver's connect (dbscope's, through cancels)."""
    return [
        task
        for task in asyncio.all_tasks()
        if not task.done() and "connect" in getattr(task.get_coro(), "__qualname__", "")
    ]


@contextlib.asynccontextmanager
async def connect_left_running(database_url: str) -> AsyncIterator[Database]:
    """A Database whose unit was cancelled while its connection opened (a server slow to
    answer: a silent proxy), its connect left running alone."""
    async with helpers.proxied(database_url) as (proxy, url):
        db = Database(url, pool_size=1, max_overflow=0, connect_timeout=1)
        await db.connect()
        await new_connection_at_each_checkout(db)
        proxy.silent = True
        accepted = proxy.accepted

        async def one_unit() -> None:
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))

        unit = asyncio.ensure_future(one_unit())
        for _ in range(POLLS):  # until the connect reached the proxy
            if proxy.accepted > accepted or unit.done():
                break
            await asyncio.sleep(0.01)
        unit.cancel()
        with pytest.raises(asyncio.CancelledError):
            await unit
        try:
            yield db
        finally:
            await db.dispose()


# asyncmy's connect is cancelled where it runs (_dialects/mysql.py): nothing is left running.
@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_dispose_waits_for_a_connect_a_cancel_left_running(database_url: str) -> None:
    """The unit ends at once, and its connect goes on alone; dispose() waits for it, so that
    the app's event loop does not end with it running (its connection, had it opened, left
    to the garbage collector: a ResourceWarning in 6 runs in 100 on asyncpg)."""
    async with connect_left_running(database_url) as db:
        left_running = len(driver_connects())
        await db.dispose()
        assert (left_running, driver_connects()) == (1, [])


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_dispose_waits_for_its_own_connects_only(database_url: str) -> None:
    """Another Database's dispose() does not wait for a connect this one left running (it
    waited up to its own connect_timeout and close bound)."""
    async with connect_left_running(database_url), Database(database_url) as other:
        await other.dispose()
        assert len(driver_connects()) == 1


class ClosesCounted(EndsItsTransactions):
    """dbscope's sqlite3 connection, keeping the serial numbers of those not closed yet."""

    serials: ClassVar[Iterator[int]] = itertools.count()
    unclosed: ClassVar[set[int]] = set()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.serial = next(self.serials)
        self.unclosed.add(self.serial)

    def close(self) -> None:
        self.unclosed.discard(self.serial)
        super().close()


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_a_sqlite_connection_a_cancel_left_opening_is_closed(database_url: str) -> None:
    """Units cancelled after each of their steps, each on a new connection: those cancelled
    while aiosqlite's thread opened the file had their connection closed all the same, none
    left to the garbage collector (on Python 3.13: "ResourceWarning: unclosed database")."""
    ClosesCounted.unclosed.clear()
    counted = {"factory": ClosesCounted}
    db = Database(database_url, pool_size=1, max_overflow=0, connect_args=counted)
    with nothing_reported():
        async with db:
            await new_connection_at_each_checkout(db)

            async def unit() -> bool:
                async with db.transaction() as session:
                    await session.execute(text("SELECT 1"))
                return True

            for steps in range(100):
                for late in (False, True):
                    stepped = Stepped(unit())
                    task = asyncio.create_task(stepped)
                    await reach(task, stepped, Point(steps, late))
                    task.cancel()
                    await asyncio.wait({task})
                if not task.cancelled():
                    break
            assert not task.cancelled(), "no unit ran to its end"
        assert ClosesCounted.unclosed == set()


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_dispose_waits_for_a_connect_a_timed_out_health_probe_left(
    database_url: str,
) -> None:
    """A readiness probe that ran out of time while its own connection opened (a server
    slow to answer) leaves the connect to finish alone, as a cancelled unit does; dispose()
    waits for it too."""
    async with helpers.proxied(database_url) as (proxy, url):
        db = Database(url, connect_timeout=1)
        await db.connect()
        proxy.silent = True
        health = await db.health(timeout=0.1)
        left_running = len(driver_connects())
        await db.dispose()
        assert (health.status, left_running, driver_connects()) == ("fail", 1, [])
