"""SQLite files: the units of one process that may write take the write lock in the order
they asked for it, and the turn passes on however a unit ends.

SQLite's own wait for its write lock is no line: each waiter sleeps and tries again, and one
that tries just as the lock is let go takes it ahead of those that waited longer. Under load
some waited out the whole busy timeout while later ones wrote at once. dbscope's line keeps
them in order; SQLite's lock is then contended only by other processes (and leases).
"""

import asyncio
import gc
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError, PendingRollbackError, SAWarning
from sqlalchemy.pool import ConnectionPoolEntry

from dbscope import Database
from dbscope._dialects.write_lock import Writer, writer_of

CREATE = "CREATE TABLE wl_rows (id INTEGER PRIMARY KEY, origin TEXT)"
INSERT = "INSERT INTO wl_rows (origin) VALUES (:origin)"
BUSY_TIMEOUT = 0.2  # seconds: the tests that wait it out wait this long


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A connected Database on a SQLite file with a short busy timeout, and wl_rows."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    database = Database(url, pool_size=12, connect_args={"timeout": BUSY_TIMEOUT})
    async with database:
        async with database.transaction() as session:
            await session.execute(text(CREATE))
        yield database


def line_of(db: Database) -> Writer:
    """The record of the write lock of ``db``'s file, and its line."""
    return writer_of(Path(db.url.database or "").resolve())


async def until_waiting(db: Database, count: int) -> None:
    """Until ``count`` units wait in the file's line."""
    for _ in range(500):
        if line_of(db).waiting() == count:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{line_of(db).waiting()} units wait in line, not {count}")


async def write(db: Database, origin: str, written: list[str] | None = None) -> None:
    """A unit that inserts a row of ``origin``, noted in ``written`` once inserted."""
    async with db.transaction() as session:
        await session.execute(text(INSERT), {"origin": origin})
        if written is not None:
            written.append(origin)


def assert_line_free(db: Database) -> None:
    """No unit has the turn or waits for it, and another connection can write."""
    line = line_of(db)
    assert (line.turn_taken(), line.waiting()) == (False, 0)
    other = sqlite3.connect(db.url.database or "", isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
    finally:
        other.close()


async def test_writers_take_their_turns_in_the_order_they_came(tmp_path: Path) -> None:
    """Ten units that may write arrive one after another while a unit writes: each writes in
    its turn, first come first served. SQLite's own retries gave the lock to whoever tried
    just as it was let go."""
    written: list[str] = []
    async with Database(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", pool_size=12) as db:
        async with db.transaction() as session:  # the default busy timeout: 5 s
            await session.execute(text(CREATE))
        async with db.transaction() as holder:
            await holder.execute(text(INSERT), {"origin": "holder"})
            waiting = []
            for number in range(10):
                waiting.append(asyncio.create_task(write(db, str(number), written)))
                await until_waiting(db, number + 1)
        await asyncio.gather(*waiting)
        assert written == [str(number) for number in range(10)]
        assert_line_free(db)


async def test_a_unit_that_comes_as_the_turn_is_handed_on_waits_behind(db: Database) -> None:
    """A unit that asks for the turn just as it is handed to the one waiting (before that
    one has run again) waits behind it: never two turns at once. Below anyio 4.15 the
    newcomer took it too, went first, and the waiter met SQLite's lock."""
    turns: list[tuple[str, int]] = []

    async def write_noting_turns(origin: str) -> None:
        async with db.transaction() as session:
            await session.execute(text(INSERT), {"origin": origin})
            turns.append((origin, taken_turns(db)))

    async def then_write_again(waiter: asyncio.Task[None]) -> None:
        await write_noting_turns("newcomer")  # the waiter has not run since the hand-off

    waiter = await turn_handed_on_then(db, lambda: write_noting_turns("waiter"), then_write_again)
    await waiter
    assert turns == [("waiter", 1), ("newcomer", 1)]
    assert_line_free(db)


async def test_a_unit_cancelled_as_its_turn_comes_passes_it_on(db: Database) -> None:
    """A waiting unit cancelled just as the turn is handed to it (a client gone, a timeout
    run out) passes it to the next in line. Below anyio 4.10 the turn was lost: the next
    waited out the busy timeout with the lock free, and so did every unit that came while
    one waited."""
    following: list[asyncio.Task[None]] = []

    async def cancel_it(waiter: asyncio.Task[None]) -> None:
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        for _ in range(10):  # loop turns, for the next to take the turn
            await asyncio.sleep(0)
        assert (line_of(db).waiting(), taken_turns(db)) == (0, 1)  # the next has it

    async def one_more_waiting() -> None:
        following.append(asyncio.create_task(write(db, "next")))
        await until_waiting(db, 2)

    await turn_handed_on_then(db, lambda: write(db, "cancelled"), cancel_it, one_more_waiting)
    await following[0]
    assert_line_free(db)


async def turn_handed_on_then(
    db: Database,
    waiting: Callable[[], Coroutine[None, None, None]],
    then: Callable[[asyncio.Task[None]], Awaitable[None]],
    meanwhile: Callable[[], Awaitable[None]] | None = None,
) -> asyncio.Task[None]:
    """A unit that writes while ``waiting`` waits in line (and ``meanwhile`` runs), then
    ends and runs ``then`` (given the waiting one's task) in its task at once, before the
    unit its turn went to runs again. Returns the waiting one's task."""
    holding, let_go = asyncio.Event(), asyncio.Event()
    waiters: list[asyncio.Task[None]] = []

    async def hold_then() -> None:
        async with db.transaction() as session:
            await session.execute(text(INSERT), {"origin": "holder"})
            holding.set()
            await let_go.wait()
        await then(waiters[0])

    holder = asyncio.create_task(hold_then())
    await holding.wait()
    waiter = asyncio.create_task(waiting())
    waiters.append(waiter)
    await until_waiting(db, 1)
    if meanwhile is not None:
        await meanwhile()
    let_go.set()
    await holder
    return waiter


def taken_turns(db: Database) -> int:
    """How many units of the running loop have the turn now: one at most."""
    line = line_of(db).lines.get(asyncio.get_running_loop())
    return 0 if line is None else line.borrowed_tokens


async def test_a_wait_in_line_is_the_busy_timeout_the_app_set(tmp_path: Path) -> None:
    """A busy timeout the app sets on its connections itself (a connect listener of its own,
    after sqlite3's ``timeout``) is what the connection has again after a wait in line that
    ran out. Read at connect, before the app's listener ran, it was sqlite3's, and the app's
    timeout was overwritten with it."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'app.db'}"
    async with Database(url, pool_size=2, max_overflow=0, connect_args={"timeout": 0.2}) as db:

        @event.listens_for(db.engine.sync_engine, "connect")
        def longer(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout = 400")
            cursor.close()

        await db.engine.dispose()  # the connections to come are the app's
        async with db.transaction() as session:
            await session.execute(text(CREATE))

        async def wait_out() -> None:
            with pytest.raises(OperationalError, match="database is locked"):
                await write(db, "late")

        await hold_turn_then(db, wait_out)
        async with db.lease() as first, db.lease() as second:
            for connection in (first, second):
                rows = await connection.execute_fetchall("PRAGMA busy_timeout")
                assert list(rows) == [(400,)]


async def test_a_read_only_unit_does_not_wait_in_line(db: Database) -> None:
    """Read-only units read beside the writer (WAL): no turn to wait for, none taken."""
    async with db.transaction() as holder:
        await holder.execute(text(INSERT), {"origin": "holder"})
        async with db.transaction(read_only=True) as reader:
            assert await reader.scalar(text("SELECT count(*) FROM wl_rows")) == 0
            assert line_of(db).waiting() == 0
    assert_line_free(db)


async def hold_turn_then(db: Database, end: Callable[[], Awaitable[None]]) -> None:
    """Run ``end`` while a unit of another task has the turn, then let that unit commit."""
    holding, let_go = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with db.transaction() as session:
            await session.execute(text(INSERT), {"origin": "holder"})
            holding.set()
            await let_go.wait()

    holder = asyncio.create_task(hold())
    await holding.wait()
    try:
        await end()
    finally:
        let_go.set()
        await holder


async def cancelled_in_line(db: Database) -> None:
    async def in_line() -> None:
        waiter = asyncio.create_task(write(db, "cancelled"))
        await until_waiting(db, 1)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert line_of(db).waiting() == 0

    await hold_turn_then(db, in_line)


async def waited_out_the_line(db: Database) -> None:
    # Past the busy timeout in line, SQLite is asked at once: the lock is still held.
    async def wait_out() -> None:
        with pytest.raises(OperationalError, match="database is locked"):
            await write(db, "late")

    await hold_turn_then(db, wait_out)


async def raised(db: Database) -> None:
    async def fail_after_writing() -> None:
        async with db.transaction() as session:
            await session.execute(text(INSERT), {"origin": "raised"})
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        await fail_after_writing()


async def refused_by_sqlite(db: Database) -> None:
    # Another process's connection holds the lock past the busy timeout: BEGIN fails.
    other = sqlite3.connect(db.url.database or "", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(OperationalError, match="database is locked"):
            await write(db, "refused")
    finally:
        other.close()


async def invalidated(db: Database) -> None:
    async def throw_the_connection_away() -> None:
        async with db.transaction() as session:
            await session.execute(text(INSERT), {"origin": "invalidated"})
            await (await session.connection()).invalidate()

    with pytest.raises(PendingRollbackError):  # the commit, on the connection thrown away
        await throw_the_connection_away()


async def committed_mid_unit(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(text(INSERT), {"origin": "first"})
        await session.commit()
        assert not line_of(db).turn_taken()  # until its next statement begins again
        await session.execute(text(INSERT), {"origin": "second"})


async def test_the_turn_passes_on_when_the_garbage_collector_takes_the_connection(
    db: Database,
) -> None:
    """A task dropped while its unit had the turn: the unit never ends, and the garbage
    collector's finalizer detaches its connection (an asyncio pool's), never checks it in.
    The turn was kept for ever: every later unit that may write waited out the busy timeout
    in line, and those that came together failed with "database is locked"."""
    wrote = asyncio.Event()
    threads: list[threading.Thread] = []

    async def abandoned() -> None:
        unit = db.transaction()
        session = await unit.__aenter__()
        await session.execute(text(INSERT), {"origin": "abandoned"})
        raw = await (await session.connection()).get_raw_connection()
        driver_connection = raw.driver_connection
        assert driver_connection is not None
        threads.append(driver_connection._thread)  # aiosqlite's, of this connection
        del raw, driver_connection
        wrote.set()
        await asyncio.get_running_loop().create_future()  # never done

    task = asyncio.create_task(abandoned())
    await wrote.wait()
    assert line_of(db).turn_taken()
    del task
    with pytest.warns(SAWarning, match="garbage collector"):
        gc.collect()
    assert (line_of(db).turn_taken(), line_of(db).waiting()) == (False, 0)
    await asyncio.to_thread(threads[0].join, 5)  # the connection's end, before the loop's


@pytest.mark.parametrize(
    "end",
    [
        cancelled_in_line,
        waited_out_the_line,
        raised,
        refused_by_sqlite,
        invalidated,
        committed_mid_unit,
    ],
)
async def test_the_turn_passes_on_whichever_way_a_unit_ends(
    db: Database, end: Callable[[Database], Awaitable[None]]
) -> None:
    """After a unit that waited in line or had its turn ends, by any way, no turn is kept
    and nobody is left in line: the next unit writes at once, and its busy timeout is the
    connection's own."""
    await end(db)
    assert_line_free(db)
    await write(db, "next")
    async with db.lease() as first, db.lease() as second:
        for connection in (first, second):
            rows = await connection.execute_fetchall("PRAGMA busy_timeout")  # aiosqlite's
            assert list(rows) == [(BUSY_TIMEOUT * 1000,)]
