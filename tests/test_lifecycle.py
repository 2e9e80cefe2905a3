"""The Database lifecycle: new, connected, disposed, with one message per wrong move.

Consecutive lifespans (two TestClient blocks, two ``asyncio.run`` calls) reuse one Database,
as a module-level ``db`` in an application would.
"""

import asyncio
import contextlib
import gc
import warnings
from collections.abc import AsyncIterator, Iterator

import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database, LifecycleError, testing
from tests.helpers import Lifespan, Tables, app_with, run_script, send

with warnings.catch_warnings():
    # Starlette 1.10 deprecates running its TestClient on httpx (it wants httpx2, which this
    # environment does not install); the warning is about the test client, not about dbscope.
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TABLE = "lifecycle_rows"

# A server preloaded before its workers fork (gunicorn --preload): the parent connected and
# used the pool, forks, and goes on; the child does as the other-loop LifecycleError says
# (dispose, connect again in its own loop). Prints what the child inherited, and whether
# the parent's pooled connection is still the one it had, untouched.
FORK_AFTER_USE = """
import asyncio, json, os, signal, sys
from sqlalchemy import text
from dbscope import Database

db = Database(sys.argv[1], pool_size=1, max_overflow=0)
loop = asyncio.new_event_loop()

async def driver_connection() -> int:
    async with db.transaction() as session:
        await session.execute(text("SELECT 1"))
        raw = await (await session.connection()).get_raw_connection()
        return id(raw.driver_connection)

loop.run_until_complete(db.connect())
before = loop.run_until_complete(driver_connection())
pid = os.fork()
if pid == 0:
    signal.alarm(50)  # a child hung on the parent's connections ends itself

    async def child() -> int:
        inherited = db.stats().checked_in
        await db.dispose()
        async with db:
            await driver_connection()
        return inherited
    os._exit(asyncio.run(child()))
inherited = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
after = loop.run_until_complete(driver_connection())
invalidated = db.stats().invalidated
loop.run_until_complete(db.dispose())
loop.close()
print(json.dumps([inherited, after == before, invalidated]))
"""

# A script with a module-level db that forgets dispose() at the end of its first asyncio.run
# and, in the next, does as the other-loop LifecycleError says. Prints the second run's
# unit's result and every record at WARNING or above, warnings (ResourceWarning) included.
TWO_RUNS_WITHOUT_DISPOSE = """
import asyncio, gc, json, logging, sys, warnings
from sqlalchemy import text
from dbscope import Database

warnings.simplefilter("always")
logging.captureWarnings(True)
records = []
handler = logging.Handler(logging.WARNING)
handler.emit = lambda record: records.append([record.name, record.levelname, record.getMessage()])
logging.getLogger().addHandler(handler)
db = Database(sys.argv[1])

async def unit() -> int:
    async with db.transaction() as session:
        return (await session.execute(text("SELECT 1"))).scalar_one()

async def first() -> None:
    await db.connect()
    await unit()

async def second() -> int:
    await db.dispose()
    await db.connect()
    try:
        return await unit()
    finally:
        await db.dispose()

asyncio.run(first())
result = asyncio.run(second())
gc.collect()
print(json.dumps([result, records]))
"""


def build_app(db: Database, lifespan: Lifespan | None = None) -> FastAPI:
    """An app that adds a row and counts the rows; its lifespan is db.lifespan by default."""

    async def add_row(session: AsyncSession) -> dict[str, int]:
        await session.execute(text(f"INSERT INTO {TABLE} (value) VALUES (1)"))
        count = (await session.execute(text(f"SELECT count(*) FROM {TABLE}"))).scalar_one()
        return {"count": int(count)}

    return app_with(db.session, {"POST /rows": add_row}, lifespan=lifespan or db.lifespan)


@pytest.fixture
def lifecycle_rows(database_url: str) -> Iterator[None]:
    """An empty test table, made and dropped in event loops of their own: some tests here
    run their own loops, one after the other."""
    tables = Tables(database_url)
    asyncio.run(tables.create(TABLE, "value INTEGER"))
    yield
    asyncio.run(tables.drop_all())


async def add_row_once(db: Database) -> int:
    """Connect, add a row, then dispose; returns the row count."""
    async with db, db.transaction() as session:
        await session.execute(text(f"INSERT INTO {TABLE} (value) VALUES (1)"))
        return int((await session.execute(text(f"SELECT count(*) FROM {TABLE}"))).scalar_one())


def transaction_error(db: Database) -> LifecycleError:
    """The LifecycleError that a transaction on ``db`` raises in a new event loop."""

    async def use() -> None:
        async with db.transaction():
            pass

    with pytest.raises(LifecycleError) as info:
        asyncio.run(use())
    return info.value


# -- before connect ---------------------------------------------------------------------------


async def test_a_request_before_the_lifespan_ran_raises_lifecycle_error(sqlite_url: str) -> None:
    """A request to an app whose lifespan never ran raises LifecycleError naming the lifespan."""
    app = build_app(Database(sqlite_url))
    with pytest.raises(LifecycleError, match=r"pass lifespan=db\.lifespan to FastAPI"):
        await send(app, "POST /rows", raise_app_exceptions=True)


async def test_a_request_before_the_lifespan_ran_answers_500(sqlite_url: str) -> None:
    """Served without its lifespan, the app answers 500 rather than hanging or 2xx."""
    response = await send(build_app(Database(sqlite_url)), "POST /rows")
    assert response.status_code == 500


async def test_a_transaction_before_connect_says_to_connect_first(sqlite_url: str) -> None:
    """db.transaction() before connect() raises LifecycleError naming `async with db`."""
    db = Database(sqlite_url)
    with pytest.raises(LifecycleError) as info:
        async with db.transaction():
            pass
    assert "is not connected yet" in str(info.value)
    assert "`async with db:`" in str(info.value)
    assert "await db.connect()" in str(info.value)


# -- connect, dispose, connect ----------------------------------------------------------------


async def test_connecting_twice_raises_its_own_lifecycle_error(database_url: str) -> None:
    """A second connect() fails saying the Database is already connected, and it stays usable."""
    db = Database(database_url)
    async with db:
        with pytest.raises(LifecycleError) as info:
            await db.connect()
        async with db.transaction() as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
    assert "already connected" in str(info.value)
    assert "dispose()" in str(info.value)


async def test_a_disposed_database_says_how_to_reconnect(database_url: str) -> None:
    """Using a disposed Database raises its own LifecycleError, unlike a never-connected one."""
    db = Database(database_url)
    await db.connect()
    await db.dispose()
    with pytest.raises(LifecycleError) as info:
        async with db.transaction():
            pass
    message = str(info.value)
    assert "was disposed" in message
    assert "not connected yet" not in message
    assert "await db.connect()" in message


async def test_a_disposed_database_connects_again(database_url: str) -> None:
    """connect() after dispose() gives a working Database again."""
    db = Database(database_url)
    await db.connect()
    await db.dispose()
    async with db, db.transaction() as session:
        assert (await session.execute(text("SELECT 1"))).scalar_one() == 1


async def test_dispose_twice_is_harmless(database_url: str) -> None:
    """A second dispose() does nothing and raises nothing."""
    db = Database(database_url)
    await db.connect()
    await db.dispose()
    await db.dispose()
    assert db.state == "disposed"


async def test_dispose_before_connect_does_nothing(database_url: str) -> None:
    """dispose() on a new Database leaves it new, and it connects afterwards."""
    db = Database(database_url)
    await db.dispose()
    states = [db.state]
    async with db:
        states.append(db.state)
    assert states == ["new", "connected"]


# -- consecutive lifespans and event loops ----------------------------------------------------


@pytest.mark.usefixtures("lifecycle_rows")
def test_two_test_client_lifespans_in_a_row_share_one_database(database_url: str) -> None:
    """Two TestClient blocks (each its own event loop) one after the other both serve requests."""
    db = Database(database_url)
    app = build_app(db)
    with TestClient(app) as client:
        first = client.post("/rows")
    with TestClient(app) as client:
        second = client.post("/rows")
    assert (first.status_code, second.status_code) == (200, 200)
    assert (first.json(), second.json()) == ({"count": 1}, {"count": 2})
    assert db.state == "disposed"


@pytest.mark.usefixtures("lifecycle_rows")
def test_two_asyncio_runs_in_a_row_share_one_database(database_url: str) -> None:
    """`async with db:` in two separate asyncio.run() calls both work on one Database."""
    db = Database(database_url)
    counts = [asyncio.run(add_row_once(db)) for _ in range(2)]
    assert counts == [1, 2]


def test_a_database_connected_in_another_event_loop_is_refused_clearly(
    database_url: str,
) -> None:
    """Using a Database from a loop other than the one it connected in raises LifecycleError."""
    db = Database(database_url)
    home = asyncio.new_event_loop()
    try:
        home.run_until_complete(db.connect())
        error = transaction_error(db)
        # Still whole in its own loop: the refusal touched nothing.
        home.run_until_complete(db.dispose())
    finally:
        home.close()
    assert "was connected in another event loop" in str(error)
    assert "connect again in this loop" in str(error)


async def test_two_connects_at_once_leave_one_engine(database_url: str) -> None:
    """Two connect() at once (two lifespans sharing a db, or two threads' loops): the second
    is refused while the first is under way, instead of both building an engine, the first
    one's pool then leaked and its connection closed only by the collector."""
    db = Database(database_url)
    results = await asyncio.gather(db.connect(), db.connect(), return_exceptions=True)
    await db.dispose()
    gc.collect()  # a leaked engine's connection would warn here (warnings are errors)
    assert results[0] is None
    assert isinstance(results[1], LifecycleError)
    assert "already connected" in str(results[1])


def test_a_forked_child_leaves_the_parents_connections_alone(database_url: str) -> None:
    """A child forked after the parent used the pool starts with an empty one: reconnecting
    there, as the other-loop error says, closes none of the parent's connections, which the
    parent goes on using (before, the child's dispose() ended the parent's connection:
    PostgreSQL through asyncpg and MariaDB then hung the parent's next unit)."""
    inherited, same_connection, invalidated = run_script(FORK_AFTER_USE, database_url)
    assert (inherited, same_connection, invalidated) == (0, True, 0)


def test_disposing_after_its_event_loop_closed_lets_the_pool_go_quietly(database_url: str) -> None:
    """asyncio.run() returned without dispose(): the next run's dispose() lets go of the
    pool and closes its connections without the closed loop, saying so once, and connects
    again (before: asyncmy's close logged an ERROR, "Event loop is closed", and asyncpg's
    socket was left to an unclosed-transport ResourceWarning)."""
    result, records = run_script(TWO_RUNS_WITHOUT_DISPOSE, database_url)
    assert result == 1
    assert [(name, level) for name, level, _ in records] == [("dbscope", "WARNING")], records
    assert "whose event loop has closed" in records[0][2]


@pytest.mark.usefixtures("lifecycle_rows")
async def test_a_composed_lifespan_connects_and_disposes(database_url: str) -> None:
    """An app's own lifespan entering db.lifespan(app) serves requests, then disposes."""
    db = Database(database_url)
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with db.lifespan(app):
            events.append(db.state)
            yield
        events.append(db.state)

    app = build_app(db, lifespan)
    async with app.router.lifespan_context(app):
        response = await send(app, "POST /rows", raise_app_exceptions=True)
    assert response.json() == {"count": 1}
    assert events == ["connected", "disposed"]


@pytest.mark.parametrize("wrong", ["engine", "session", "nothing"])
async def test_bind_to_something_else_than_a_connection_leaves_the_database_usable(
    sqlite_url: str, wrong: str
) -> None:
    """bind_to() an AsyncEngine, an AsyncSession or None: a ConfigurationError naming what
    it takes, and the Database stays connected (before: an AttributeError, and the Database
    'bound' for good, every unit refused as 'not connected yet')."""
    async with Database(sqlite_url) as db:
        async with db.transaction() as session:
            given = {"engine": db.engine, "session": session, "nothing": None}[wrong]
        with (
            pytest.raises(ConfigurationError, match="takes the AsyncConnection"),
            db.bind_to(given),  # type: ignore[arg-type]
        ):
            pytest.fail("bound to something else than a connection")
        async with db.transaction() as session:
            assert (await session.execute(text("SELECT 1"))).scalar_one() == 1
        assert db.state == "connected"


async def test_a_dependency_of_a_database_nobody_kept_says_so(sqlite_url: str) -> None:
    """``Depends(Database(url).session)``: the dependency holds its Database weakly, and the
    request met an AssertionError (an AttributeError under ``python -O``)."""

    async def endpoint(session: AsyncSession) -> int:
        return int(await session.scalar(text("SELECT 1")) or 0)

    app = app_with(Database(sqlite_url).session, {"GET /one": endpoint})
    gc.collect()
    with pytest.raises(LifecycleError, match="garbage-collected"):
        await send(app, "GET /one", raise_app_exceptions=True)


async def test_disposing_with_units_still_running_is_warned_of(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A task the app started still in its unit when the lifespan ends: the loop's end then
    cancels it, its work lost without a word. The pool's dispose says so first."""
    db = Database(sqlite_url)
    await db.connect()
    started, release = asyncio.Event(), asyncio.Event()

    async def background() -> None:
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
            started.set()
            await release.wait()
            # Its connection closed here, not left to the collector, which would warn.
            await session.invalidate()

    task = asyncio.ensure_future(background())
    await started.wait()
    with caplog.at_level("WARNING", logger="dbscope"):
        await db.dispose()
    release.set()
    with contextlib.suppress(Exception):
        await task
    warned = [record.getMessage() for record in caplog.records]
    assert any("with 1 connection(s) still in use" in line for line in warned), warned


@pytest.mark.usefixtures("lifecycle_rows")
async def test_a_test_client_request_on_a_bound_database_names_the_client_to_use(
    database_url: str,
) -> None:
    """Starlette's TestClient serves the app in a thread with a loop of its own, where a
    Database bound to the test's connection cannot run; the refusal says so and names the
    in-loop client, instead of telling a test that never connected to connect again."""
    db = Database(database_url)
    with testing.any_loop_engine(database_url) as engine:
        async with testing.rolled_back(db, engine):
            with TestClient(build_app(db)) as client, pytest.raises(LifecycleError) as error:
                client.post("/rows")
    assert "is bound to a test's connection" in str(error.value)
    assert "TestClient" in str(error.value)
    assert "dbscope_client" in str(error.value)
    assert "connect again" not in str(error.value)
