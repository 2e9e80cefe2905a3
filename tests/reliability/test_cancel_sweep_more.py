"""The cancel sweep (tests/cancel_points.py) over what test_cancel_sweep.py leaves out.

There the connection is never pinged at checkout, and the units are ``db.transaction()``,
``db.retrying()`` and a ``db.session`` request. Here, with the same guarantees after each
cancel point (nothing checked out, no transaction open, the cancel not swallowed, the next
unit fine, the row present iff committed, nothing reported):

- every checkout pings the connection (``pool_pre_ping_after=0``), and a cancel lands during
  the ping: counted, not assumed;
- ``db.lease()``: the driver's own connection, its own transaction, committed;
- ``db.stream()``: a server-side cursor read a few rows at a time, cancelled inside the
  stream and between its chunks;
- a request on ``db.session_with(...)`` at ``SERIALIZABLE`` or with a ``statement_timeout``:
  set on the connection for the unit and put back after it, which a cancel must not skip.

Counts only, never how long anything took.
"""

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from sqlalchemy import event, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from dbscope.testing import client
from tests.cancel_points import ROWS, Point, Sweep, Unit, open_sweep, run_sweep, write_row
from tests.helpers import SERVER_BACKENDS, Tables, app_with
from tests.new_connections import new_connection_at_each_checkout

# The smallest pool_pre_ping_after (_settings.py): a ping at every checkout but a new
# connection's, so every swept unit pings (a following unit runs before it, and checks in).
EVERY_CHECKOUT = {"pool_pre_ping": True, "pool_pre_ping_after": 0}  # SQLite's is off by default
SEEDS = [f"seed-{i}" for i in range(5)]  # the rows a stream reads
STREAM_BATCH = 2  # rows per fetch of the server-side cursor: several fetches per stream


@pytest.fixture
async def sweep(database_url: str, db_backend: str, tables: Tables) -> AsyncIterator[Sweep]:
    """A Database of one connection on the test's ``cs_rows``, never pinged at checkout."""
    async with open_sweep(database_url, db_backend, tables) as state:
        yield state


@pytest.fixture
async def pinged(database_url: str, db_backend: str, tables: Tables) -> AsyncIterator[Sweep]:
    """The same, its connection pinged at every checkout."""
    async with open_sweep(database_url, db_backend, tables, **EVERY_CHECKOUT) as state:
        yield state


@contextlib.asynccontextmanager
async def in_transaction(db: Database) -> AsyncIterator[Unit]:
    """The unit as ``async with db.transaction()``."""

    async def unit(tag: str) -> bool:
        async with db.transaction() as session:
            await write_row(session, tag)
        return True

    yield unit


# -- pings at checkout ------------------------------------------------------------------------


@dataclass
class PingWatch:
    """Counts the checkout pings sent, and those a cancel cut short (it passed through them)."""

    sent: int = 0
    cut_short: int = 0

    def watch(self, do_ping: Callable[[Any], bool]) -> Callable[[Any], bool]:
        def watched(dbapi_connection: Any) -> bool:
            self.sent += 1
            try:
                return do_ping(dbapi_connection)
            except asyncio.CancelledError:
                self.cut_short += 1
                raise

        return watched


@pytest.mark.parametrize("cause", ["cancel", "asyncio_timeout", "anyio_move_on_after"])
async def test_a_cancel_during_the_checkout_ping_leaves_nothing_behind(
    pinged: Sweep, cause: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a ping at every checkout, a transaction cancelled at each step, the ping's
    included (early and late): nothing left behind, and the cancel did land in the ping."""
    watch = PingWatch()
    dialect = pinged.db.engine.dialect
    monkeypatch.setattr(dialect, "do_ping", watch.watch(dialect.do_ping))
    await run_sweep(pinged, in_transaction(pinged.db), "transaction pinged", cause)
    assert pinged.db.stats().pinged == watch.sent > 0
    assert watch.cut_short > 0, "no cancel landed during a ping"


# -- a new connection at every checkout -------------------------------------------------------


async def test_a_cancel_while_the_unit_opens_its_connection_leaves_nothing_behind(
    database_url: str, db_backend: str, tables: Tables
) -> None:
    """With each connection replaced at its next checkout (tests/new_connections.py), every
    unit closes the old connection and opens a new one: a transaction cancelled at each step
    of those too. asyncmy's connect awaits the socket in Python 3.11's ``asyncio.wait_for``, which
    returned the connection in place of a cancel that came as it opened: the unit went on
    (a task cancelled in a loop of units ran for ever)."""
    async with open_sweep(database_url, db_backend, tables) as sweep:
        await new_connection_at_each_checkout(sweep.db)
        opened: list[object] = []
        event.listen(sweep.db.engine.sync_engine, "connect", lambda *_: opened.append(True))
        points = await run_sweep(sweep, in_transaction(sweep.db), "transaction connects", "cancel")
    # Each following unit opened a connection of its own, and so did each swept one that ran.
    assert len(opened) >= len(points) + sum(point.completed for point in points)


# -- db.lease() -------------------------------------------------------------------------------


async def asyncpg_write(connection: Any, tag: str, committing: Callable[[], None]) -> None:
    """Read, write ``tag``, commit: in asyncpg's own transaction."""
    async with connection.transaction():
        await connection.fetchval("SELECT count(*) FROM cs_rows")
        await connection.execute("INSERT INTO cs_rows (tag) VALUES ($1)", tag)
        committing()  # the block's end sends COMMIT, with no await before it


async def psycopg_write(connection: Any, tag: str, committing: Callable[[], None]) -> None:
    """The same in psycopg's own transaction."""
    async with connection.transaction():
        await (await connection.execute("SELECT count(*) FROM cs_rows")).fetchone()
        await connection.execute("INSERT INTO cs_rows (tag) VALUES (%s)", (tag,))
        committing()


async def asyncmy_write(connection: Any, tag: str, committing: Callable[[], None]) -> None:
    """The same on asyncmy, whose leased connection is in autocommit: BEGIN, COMMIT."""
    await connection.begin()
    async with connection.cursor() as cursor:
        await cursor.execute("SELECT count(*) FROM cs_rows")
        await cursor.fetchone()
        await cursor.execute("INSERT INTO cs_rows (tag) VALUES (%s)", (tag,))
    committing()
    await connection.commit()


async def aiosqlite_write(connection: Any, tag: str, committing: Callable[[], None]) -> None:
    """The same on aiosqlite, which dbscope opens in autocommit (BEGIN explicit)."""
    await (await connection.execute("BEGIN")).close()
    async with connection.execute("SELECT count(*) FROM cs_rows") as cursor:
        await cursor.fetchone()
    await (await connection.execute("INSERT INTO cs_rows (tag) VALUES (?)", (tag,))).close()
    committing()
    await connection.commit()


LEASE_WRITES = {
    "asyncpg": asyncpg_write,
    "psycopg": psycopg_write,
    "asyncmy": asyncmy_write,
    "sqlite": aiosqlite_write,
}


@contextlib.asynccontextmanager
async def in_lease(sweep: Sweep) -> AsyncIterator[Unit]:
    """The unit as ``async with db.lease()``, the driver's own SQL; its COMMIT counted by
    hand, as the engine never sees it."""
    write = LEASE_WRITES[sweep.backend]

    async def unit(tag: str) -> bool:
        async with sweep.db.lease() as connection:
            await write(connection, tag, sweep.count_commit)
        return True

    yield unit


@pytest.mark.parametrize("cause", ["cancel", "asyncio_timeout", "anyio_move_on_after"])
async def test_a_lease_cancelled_at_any_step_leaves_nothing_behind(
    sweep: Sweep, cause: str
) -> None:
    """A lease that reads, writes and commits in the driver's own transaction, cancelled
    at each step (its autocommit switch and give-back included): the connection back in
    the pool or discarded, no transaction open, the row there iff committed."""
    await run_sweep(sweep, in_lease(sweep), "lease", cause)


async def test_a_lease_cancelled_during_its_checkout_ping_leaves_nothing_behind(
    pinged: Sweep, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease's checkout (raw_connection) pings too: a cancel there leaves nothing."""
    watch = PingWatch()
    dialect = pinged.db.engine.dialect
    monkeypatch.setattr(dialect, "do_ping", watch.watch(dialect.do_ping))
    await run_sweep(pinged, in_lease(pinged), "lease pinged", "cancel")
    assert watch.cut_short > 0, "no cancel landed during a ping"


# -- db.stream() ------------------------------------------------------------------------------


async def streamed_seeds(session: AsyncSession, tag: str) -> AsyncIterator[str]:
    """Write ``tag``, then stream the seeds through a server-side cursor, a few at a time.
    The write comes first: asyncmy's unbuffered cursor allows no statement while it reads."""
    await session.execute(insert(ROWS).values(tag=tag))
    seeds = select(ROWS.c.tag).where(ROWS.c.tag.like("seed-%")).order_by(ROWS.c.tag)
    async for seed in await session.stream_scalars(seeds, execution_options={"yield_per": 2}):
        yield str(seed)


@contextlib.asynccontextmanager
async def in_stream(db: Database) -> AsyncIterator[Unit]:
    """The unit as a consumer of ``db.stream()``, which awaits between chunks (as sending
    each would): a cancel there finds the stream suspended, its cursor open, and the
    consumer closes it (``aclosing``), as a generator cut short must be."""
    async with db.transaction() as session:
        await session.execute(insert(ROWS), [{"tag": seed} for seed in SEEDS])

    async def unit(tag: str) -> bool:
        # db.stream() is typed an AsyncIterator; it is an async generator, to be closed.
        chunks = cast(AsyncGenerator[str, None], db.stream(lambda s: streamed_seeds(s, tag)))
        got = []
        async with contextlib.aclosing(chunks):
            async for chunk in chunks:
                got.append(chunk)
                await asyncio.sleep(0)
        assert got == SEEDS
        return True

    yield unit


# On psycopg it failed until a stream's cursor was closed where SQLAlchemy leaves it open (a
# cancel during its DECLARE: ``postgresql_drivers.closed_server_cursor``; an anyio cancel
# during its CLOSE at the unit's end: ``_async_session.close_streams``): psycopg warned when
# the garbage collector found it (a ResourceWarning). On SQLite it failed until a connection
# rolled back before closing (``_dialects/sqlite.py``): the stream's statement, kept alive by
# the cancel's traceback, left the closed connection open with its transaction and the file's
# write lock.
@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg", "asyncmy", "sqlite"])
@pytest.mark.parametrize("cause", ["cancel", "asyncio_timeout", "anyio_move_on_after"])
async def test_a_stream_cancelled_at_any_step_leaves_nothing_behind(
    sweep: Sweep, cause: str
) -> None:
    """A stream that writes its row, then reads rows through a server-side cursor,
    cancelled at each step, in the stream or between its chunks: nothing left behind, the
    row there iff the stream completed and committed."""
    await run_sweep(sweep, in_stream(sweep.db), "stream", cause)


# -- db.session_with(...) ---------------------------------------------------------------------

# What a unit with options sets on the connection and must put back: the isolation level
# (an engine view's, set at checkout, reset at checkin; on MariaDB a round trip each way) and
# the statement timeout (on MariaDB a session variable, reset when the unit ends).
SESSION_STATE = {
    "postgresql": "SELECT current_setting('transaction_isolation'),"
    " current_setting('statement_timeout')",
    "mysql": "SELECT @@tx_isolation, @@max_statement_time",
    "sqlite": "PRAGMA read_uncommitted",  # SQLAlchemy's SERIALIZABLE on SQLite: 0, the default
}
OPTIONS: dict[str, dict[str, Any]] = {
    "serializable": {"isolation_level": "SERIALIZABLE"},
    "statement_timeout": {"statement_timeout": 30},
}


async def session_state(db: Database) -> tuple[str, ...]:
    """What a unit with default options finds set on the connection."""
    async with db.transaction() as session:
        query = text(SESSION_STATE[db.engine.dialect.name])
        return tuple(str(value) for value in (await session.execute(query)).one())


@contextlib.asynccontextmanager
async def in_request(db: Database, options: dict[str, Any]) -> AsyncIterator[Unit]:
    """The unit as a request's on ``db.session_with(**options)``, through the app
    in-process: cancelling the task that sends it cancels the app, as a server does."""
    app = app_with(db.session_with(**options), {"POST /rows/{tag}": write_row})
    async with client(app) as http:

        async def unit(tag: str) -> bool:
            response = await http.post(f"/rows/{tag}")
            assert response.status_code == 200, response.text
            return True

        yield unit


async def sweep_with(sweep: Sweep, option: str, cause: str) -> None:
    """Sweep a request on ``db.session_with`` with ``OPTIONS[option]``; after each point the
    next unit finds the connection as a unit without options left it."""
    default = await session_state(sweep.db)

    async def put_back(point: Point) -> None:
        assert await session_state(sweep.db) == default, f"cancelled at {point}: state kept"

    units = in_request(sweep.db, OPTIONS[option])
    await run_sweep(sweep, units, f"session_with {option}", cause, put_back)


@pytest.mark.parametrize("cause", ["cancel", "anyio_move_on_after"])
async def test_a_serializable_request_cancelled_at_any_step_leaves_nothing_behind(
    sweep: Sweep, cause: str
) -> None:
    """A request on ``db.session_with(isolation_level="SERIALIZABLE")`` cancelled at each
    step: nothing left behind, and the next unit at the default level again."""
    await sweep_with(sweep, "serializable", cause)


# No statement timeout on SQLite: dbscope refuses the option there (ConfigurationError).
@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.parametrize("cause", ["cancel", "anyio_move_on_after"])
async def test_a_request_with_a_statement_timeout_cancelled_at_any_step_leaves_nothing_behind(
    sweep: Sweep, cause: str
) -> None:
    """A request on ``db.session_with(statement_timeout=30)`` cancelled at each step:
    nothing left behind, and the next unit under the server's own timeout again."""
    await sweep_with(sweep, "statement_timeout", cause)
