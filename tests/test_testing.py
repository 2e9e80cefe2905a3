"""dbscope.testing, used without pytest's help: transactions, engines, lifespans, tables."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which
# name a Session alias local to a test.

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, Request
from sqlalchemy import Column, Integer, MetaData, Table, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dbscope import ConfigurationError, Database, LifecycleError, testing

from .helpers import SERVER_BACKENDS, admin, imported_by
from .run_databases import (
    create_database,
    database_exists,
    drop_database,
    drop_tables,
    execute,
    on_server,
    rows,
    run_database,
    table_names,
)

TABLE = "tt_rows"
# The app's Database as it would be in production: never connected in these tests.
NOWHERE = "postgresql+asyncpg://nobody@127.0.0.1:9/production"

metadata = MetaData()
rows_table = Table(TABLE, metadata, Column("id", Integer, primary_key=True))
# The app's tables, for own_database() and own_tables().
notes = MetaData()
Table("tt_notes", notes, Column("id", Integer, primary_key=True))
CREATE_NOTES = "CREATE TABLE tt_notes (id INTEGER PRIMARY KEY)"


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An any-loop engine on the test database, with an empty tt_rows table."""
    async with admin(database_url) as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        await connection.execute(text(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY)"))
    with testing.any_loop_engine(database_url) as engine:
        yield engine
    async with admin(database_url) as connection:
        await connection.execute(text(f"DROP TABLE {TABLE}"))


async def count_rows(engine: AsyncEngine) -> int:
    """The rows of tt_rows, seen from a connection outside any test transaction."""
    async with engine.connect() as connection:
        return int(
            (await connection.execute(select(func.count()).select_from(rows_table))).scalar_one()
        )


async def test_rolled_back_removes_what_committed_units_wrote(engine: AsyncEngine) -> None:
    """Committed db.transaction() blocks are savepoints: nothing remains after the block."""
    db = Database(NOWHERE)

    async with testing.rolled_back(db, engine):
        for row_id in (1, 2):
            async with db.transaction() as session:
                await session.execute(insert(rows_table).values(id=row_id))
        async with db.transaction() as session:
            inside = await session.scalar(select(func.count()).select_from(rows_table))

    assert inside == 2
    assert await count_rows(engine) == 0
    assert db.state == "new"


async def test_a_commit_of_the_test_transaction_is_refused_and_keeps_nothing(
    engine: AsyncEngine, database_url: str
) -> None:
    """commit() on the connection rolled_back() yields raises LifecycleError before the
    COMMIT is sent: nothing stays, on a connection of its own or on a pooled one."""
    db = Database(NOWHERE)
    async with Database(database_url, pool_size=1) as pooled:
        for test_engine in (engine, pooled.engine):
            async with testing.rolled_back(db, test_engine) as connection:
                await connection.execute(insert(rows_table).values(id=1))
                with pytest.raises(LifecycleError, match="its rows would stay for every later"):
                    await connection.commit()
            async with test_engine.connect() as after:  # pooled: the same server connection
                left = await after.scalar(select(func.count()).select_from(rows_table))
            assert left == 0
    assert await count_rows(engine) == 0


async def test_a_commit_after_the_test_ended_its_transaction_is_refused_for_what_it_is(
    engine: AsyncEngine,
) -> None:
    """After rollback() on the test's connection, a unit's commit would be a real one: it is
    refused, saying the test transaction had ended (not that the test committed it)."""
    db = Database(NOWHERE)

    async with testing.rolled_back(db, engine) as connection:
        await connection.rollback()
        with pytest.raises(LifecycleError, match="after the test transaction had ended") as error:
            async with db.transaction() as session:
                await session.execute(insert(rows_table).values(id=1))

    assert "The test committed" not in str(error.value)
    assert await count_rows(engine) == 0


# asyncmy's transaction status is the server's flag, which reads leave unset: not asked there.
@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "psycopg"])
async def test_a_commit_sent_as_sql_in_a_test_is_named_at_its_end(engine: AsyncEngine) -> None:
    """A COMMIT sent as SQL (before a CREATE INDEX CONCURRENTLY, say) ends the test
    transaction where no event sees it: the row stayed for every later test, and nothing said
    why. At the end the driver is asked, and the test fails naming it."""

    async def commit_as_sql() -> None:
        async with testing.rolled_back(Database(NOWHERE), engine) as connection:
            await connection.execute(insert(rows_table).values(id=1))
            await connection.exec_driver_sql("COMMIT")

    with pytest.raises(LifecycleError, match="ended by a COMMIT or ROLLBACK sent as SQL"):
        await commit_as_sql()
    assert await count_rows(engine) == 1  # kept, as the failure says


async def insert_then_fail(db: Database) -> None:
    """Insert row 2 in a transaction that then raises LookupError."""
    async with db.transaction() as session:
        await session.execute(insert(rows_table).values(id=2))
        raise LookupError


async def test_a_unit_that_fails_rolls_back_only_its_savepoint(engine: AsyncEngine) -> None:
    """A unit of work that raises undoes its own writes and none of the test's."""
    db = Database(NOWHERE)

    async with testing.rolled_back(db, engine):
        async with db.transaction() as session:
            await session.execute(insert(rows_table).values(id=1))
        with pytest.raises(LookupError):
            await insert_then_fail(db)
        async with db.transaction() as session:
            ids = list(await session.scalars(select(rows_table.c.id)))

    assert ids == [1]


async def test_open_session_is_the_current_session_and_keeps_only_commits(
    engine: AsyncEngine,
) -> None:
    """open_session() is db.current_session() inside; what it did not commit is undone."""
    db = Database(NOWHERE)

    async with testing.rolled_back(db, engine):
        async with testing.open_session(db) as session:
            assert db.current_session() is session
            await session.execute(insert(rows_table).values(id=1))
            await session.commit()
            await session.execute(insert(rows_table).values(id=2))
        async with db.transaction() as session:
            ids = list(await session.scalars(select(rows_table.c.id)))

    assert ids == [1]


def test_an_any_loop_engine_serves_one_event_loop_after_another(database_url: str) -> None:
    """Each asyncio.run() gets a working connection from the same engine."""

    async def select_one(engine: AsyncEngine) -> int:
        async with engine.connect() as connection:
            return int((await connection.execute(text("SELECT 1"))).scalar_one())

    with testing.any_loop_engine(database_url) as engine:
        results = [asyncio.run(select_one(engine)) for _ in range(3)]

    assert results == [1, 1, 1]


def test_an_in_memory_sqlite_test_database_is_refused_with_the_fix() -> None:
    """Tests each open a connection, so an in-memory database would be empty for them."""
    engine = testing.any_loop_engine("sqlite+aiosqlite:///:memory:")
    with pytest.raises(ConfigurationError, match=r"in-memory.*Use a file"):
        engine.__enter__()


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
async def test_create_tables_and_drop_tables_follow_the_metadata(database_url: str) -> None:
    """create_tables() makes the metadata's tables and drop_tables() removes them."""
    own = MetaData()
    Table("tt_made", own, Column("id", Integer, primary_key=True))

    testing.create_tables(database_url, metadata=own)
    async with admin(database_url) as connection:
        made = await connection.run_sync(lambda c: c.dialect.has_table(c, "tt_made"))
    testing.drop_tables(database_url, metadata=own)
    async with admin(database_url) as connection:
        left = await connection.run_sync(lambda c: c.dialect.has_table(c, "tt_made"))

    assert (made, left) == (True, False)


def test_create_tables_without_metadata_or_migrations_says_what_to_pass() -> None:
    """Neither metadata nor an Alembic configuration: the error names both."""
    with pytest.raises(ConfigurationError, match=r"metadata=Base\.metadata.*alembic_config="):
        testing.create_tables("sqlite+aiosqlite:///unused.db")


def lifespan_app(events: list[str], *, fail: bool = False) -> FastAPI:
    """An app whose lifespan holds a task group open and yields a state."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("startup")
        if fail:
            raise ValueError("the cache is unreachable")
        async with anyio.create_task_group():
            yield {"greeting": "hello"}
            events.append("shutdown")

    app = FastAPI(lifespan=lifespan)

    @app.get("/greeting")
    async def greeting(request: Request) -> str:
        return str(request.state.greeting)

    return app


async def test_the_lifespan_may_end_in_another_task_than_it_began() -> None:
    """Start-up and shutdown run in the lifespan's own task, as fixtures' halves may not."""
    events: list[str] = []
    running = testing.running_app(lifespan_app(events))

    await asyncio.create_task(running.__aenter__())
    await asyncio.create_task(running.__aexit__(None, None, None))

    assert events == ["startup", "shutdown"]


async def test_the_client_passes_the_lifespan_state_to_requests() -> None:
    """request.state holds what the lifespan yielded, as under a server."""
    events: list[str] = []

    async with testing.client(lifespan_app(events)) as http:
        response = await http.get("/greeting")

    assert response.json() == "hello"
    assert events == ["startup", "shutdown"]


async def test_a_failing_startup_raises_the_apps_own_error() -> None:
    """The lifespan's exception reaches the test unchanged."""
    with pytest.raises(ValueError, match="the cache is unreachable"):
        async with testing.running_app(lifespan_app([], fail=True)):
            pass


async def test_an_app_without_a_lifespan_is_served_without_one() -> None:
    """An ASGI app that raises on the lifespan scope, before asking for a message, has no
    lifespan: as the ASGI specification tells servers, the client goes on without one."""

    async def http_only(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            raise ValueError(f"unsupported scope {scope['type']!r}")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async with testing.client(http_only) as http:
        status = (await http.get("/")).status_code

    assert status == 204


async def test_a_failing_shutdown_raises_the_apps_own_error() -> None:
    """An exception at shutdown, after a start-up that went well, reaches the test."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        raise ValueError("the queue would not flush")

    with pytest.raises(ValueError, match="the queue would not flush"):
        async with testing.running_app(FastAPI(lifespan=lifespan)):
            pass


async def test_requests_through_the_client_join_the_test_transaction(
    engine: AsyncEngine,
) -> None:
    """An endpoint's commit is visible in the test's transaction and gone after it."""
    db = Database(NOWHERE)
    app = FastAPI(lifespan=db.lifespan)
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/rows/{row_id}")
    async def add_row(row_id: int, session: Session) -> None:
        await session.execute(insert(rows_table).values(id=row_id))

    async with testing.rolled_back(db, engine):
        async with testing.client(app) as http:
            status = (await http.post("/rows/7")).status_code
        async with db.transaction() as session:
            ids = list(await session.scalars(select(rows_table.c.id)))

    assert (status, ids) == (200, [7])
    assert await count_rows(engine) == 0


def test_importing_dbscope_testing_imports_neither_pytest_nor_fastapi() -> None:
    """Any test runner can use dbscope.testing: it loads no pytest, FastAPI or httpx."""
    heavy = ("pytest", "_pytest", "fastapi", "starlette", "httpx")
    assert imported_by("import dbscope.testing", *heavy) == []


def test_dbscope_testing_exports_its_helpers_under_the_public_module() -> None:
    """The package lists its helpers once, sorted, and each names dbscope.testing as home."""
    homes = {name: getattr(testing, name).__module__ for name in testing.__all__}

    assert testing.__all__ == sorted(testing.__all__)
    assert set(homes.values()) == {"dbscope.testing"}
    assert "running_app" in homes
    assert "lifespan" not in homes


@pytest.fixture
def named(database_url: str) -> Iterator[str]:
    """The database URL, with no tt_notes nor tt_other table, and no run database of it."""

    def clean() -> None:
        drop_tables(database_url, "tt_notes", "tt_other")
        drop_database(run_database(database_url))

    clean()
    yield database_url
    clean()


def test_own_database_makes_the_runs_database_with_the_tables_and_drops_it(named: str) -> None:
    """The run's database is name_test, with the app's tables; it is gone at the end."""
    with testing.own_database(named, metadata=notes) as url:
        inside = (make_url(url).database, table_names(url, "tt_"))

    assert inside == (make_url(run_database(named)).database, {"tt_notes"})
    assert not database_exists(run_database(named))


def test_own_database_keeps_the_rows_of_the_database_it_is_named_after(named: str) -> None:
    """The named database, holding the app's table and a row, is as it was after the run."""
    execute(named, CREATE_NOTES, "INSERT INTO tt_notes (id) VALUES (1)")

    with testing.own_database(named, metadata=notes) as url:
        execute(url, "INSERT INTO tt_notes (id) VALUES (2)")

    assert rows(named, "tt_notes") == [(1,)]


def test_own_database_drops_only_a_database_it_made(named: str) -> None:
    """A name_test someone else made is used, and stays with its tables; the run's go."""
    own = run_database(named)
    create_database(own)
    execute(own, "CREATE TABLE tt_other (id INTEGER PRIMARY KEY)")
    notes_said: list[str] = []

    with testing.own_database(named, metadata=notes, report=notes_said.append) as url:
        inside = table_names(url, "tt_")

    assert inside == {"tt_notes", "tt_other"}
    assert (database_exists(own), table_names(own, "tt_")) == (True, {"tt_other"})
    assert "dbscope did not make it" in notes_said[0]


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
def test_own_database_makes_and_drops_the_very_name_that_has_a_percent_or_a_colon(
    database_url: str,
) -> None:
    """'tt_pct%:x' names the database made, yielded and dropped: through text(), psycopg and
    asyncmy made 'tt_pct%%:x_test' and could drop another database than the one found."""
    named = make_url(database_url).set(database="tt_pct%:x").render_as_string(False)
    with testing.own_database(named, metadata=notes) as url:
        inside = table_names(url, "tt_")
    left = on_server(
        database_url,
        "SELECT datname FROM pg_database WHERE strpos(datname, 'tt_pct') = 1"
        if make_url(database_url).get_backend_name() == "postgresql"
        else "SELECT schema_name FROM information_schema.schemata "
        "WHERE locate('tt_pct', schema_name) = 1",
    )
    assert (make_url(url).database, inside) == ("tt_pct%:x_test", {"tt_notes"})
    assert left == []


def test_own_database_of_a_sqlite_uri_is_the_file_beside_the_one_it_opens(
    tmp_path: Path,
) -> None:
    """file:app.db?uri=true opens app.db: the run's database is app_test.db beside it, made and
    dropped by its path; an app_test.db of someone else's keeps its rows and gets no mark."""
    url = f"sqlite+aiosqlite:///file:{tmp_path / 'app.db'}?uri=true"
    run_file = tmp_path / "app_test.db"
    with testing.own_database(url, metadata=notes) as test_url:
        made = (make_url(test_url).database, run_file.exists())
    assert made == (str(run_file), True)
    assert not run_file.exists()

    with contextlib.closing(sqlite3.connect(run_file)) as theirs, theirs:  # closed, committed
        theirs.execute(CREATE_NOTES)
        theirs.execute("INSERT INTO tt_notes (id) VALUES (7)")
    with (
        pytest.raises(testing.DatabaseSetupError, match=r"tables tt_notes"),
        testing.own_database(url, metadata=notes),
    ):
        pass
    with contextlib.closing(sqlite3.connect(run_file)) as theirs:
        kept = theirs.execute("SELECT id FROM tt_notes").fetchall()
        mark = theirs.execute("PRAGMA application_id").fetchone()
    assert (kept, mark) == ([(7,)], (0,))


def test_own_database_refuses_the_apps_tables_in_a_database_it_did_not_make(
    named: str,
) -> None:
    """The app's tables in someone else's name_test stop the run, named with the option."""
    own = run_database(named)
    create_database(own)
    execute(own, CREATE_NOTES, "INSERT INTO tt_notes (id) VALUES (1)")

    with (
        pytest.raises(testing.DatabaseSetupError, match=r"tables tt_notes,.*use_existing_tables="),
        testing.own_database(named, metadata=notes),
    ):
        pass

    assert rows(own, "tt_notes") == [(1,)]


def test_own_database_reuses_what_it_kept_and_remakes_what_was_left(named: str) -> None:
    """reuse=True keeps the database for the next run; without it a left one is made anew."""
    said: list[str] = []
    seen = []

    for number, reuse in enumerate((True, True, False), start=1):
        with testing.own_database(named, metadata=notes, reuse=reuse, report=said.append) as url:
            seen.append(rows(url, "tt_notes"))
            execute(url, f"INSERT INTO tt_notes (id) VALUES ({number})")

    assert seen == [[], [(1,)], []]
    assert [line.split(" ", 1)[0] for line in said] == ["kept", "reusing", "kept", "dropped"]
    assert not database_exists(run_database(named))


@pytest.mark.parametrize("db_backend", ["asyncpg", "sqlite"])
def test_own_tables_drops_only_the_tables_it_made(named: str) -> None:
    """In a database it did not make, the run's tables go at the end and the others stay."""
    execute(named, "CREATE TABLE tt_other (id INTEGER PRIMARY KEY)")

    with testing.own_tables(named, metadata=notes):
        inside = table_names(named, "tt_")

    assert (inside, table_names(named, "tt_")) == ({"tt_notes", "tt_other"}, {"tt_other"})


def test_a_url_naming_too_long_a_database_is_refused_with_the_limit() -> None:
    """PostgreSQL keeps 63 bytes of a name: the error says so before any connection."""
    url = "postgresql+asyncpg://nobody@127.0.0.1:9/" + "d" * 60

    with (
        pytest.raises(testing.DatabaseSetupError, match=r"63 bytes postgresql allows.*in the URL"),
        testing.own_database(url),
    ):
        pass
