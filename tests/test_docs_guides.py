"""The guides' shorter blocks run as written, in the setting their page gives them: the
names the page defined before (``db``, ``app``, ``Session``) and the models they name."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy import ForeignKey, String, inspect, select, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import Database
from tests import helpers, plugin_projects
from tests.documented import block_containing, python_blocks, run_async_block, run_block


class Base(DeclarativeBase):
    """The tables the guides' fragments name."""


class Note(Base):
    """docs/fastapi.md's and docs/units-of-work.md's notes."""

    __tablename__ = "guide_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100), default="")
    text: Mapped[str] = mapped_column(String(100), default="")
    archived: Mapped[bool] = mapped_column(default=False)


class User(Base):
    """docs/units-of-work.md's users."""

    __tablename__ = "guide_users"
    id: Mapped[int] = mapped_column(primary_key=True)


class Order(Base):
    """docs/units-of-work.md's orders."""

    __tablename__ = "guide_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("guide_users.id"))


MODELS = {"Base": Base, "Note": Note, "User": User, "Order": Order}


@pytest.fixture
async def connected(database_url: str, tables: helpers.Tables) -> AsyncIterator[Database]:
    """A connected Database on the test's database, with the guides' tables."""
    await tables.create_all(Base.metadata)
    async with Database(database_url) as db:
        yield db


def fastapi_page(database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """docs/fastapi.md's first block (``db`` from the environment, ``app``, ``Session``)."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    return run_block(python_blocks("docs/fastapi.md")[0], database_url)


async def test_the_readmes_script_deletes_the_note(
    database_url: str, tables: helpers.Tables
) -> None:
    """README's script block connects, deletes note 1 in a transaction, and disposes."""
    namespace = run_block(python_blocks("README.md")[0], database_url)
    await tables.create("notes", "id INTEGER PRIMARY KEY, text VARCHAR(200)")
    async with helpers.admin(database_url) as connection:
        await connection.execute(text("INSERT INTO notes VALUES (1, 'a'), (2, 'b')"))
    await run_async_block(block_containing("README.md", "DELETE FROM notes"), namespace)
    async with helpers.admin(database_url) as connection:
        left = (await connection.execute(text("SELECT id FROM notes"))).scalars().all()
    assert left == [2]
    assert namespace["db"].state == "disposed"


def test_each_way_to_build_a_database_in_the_configuration_guide_builds_one(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The five constructors of docs/configuration.md, with the settings they read."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"DATABASE_URL={sqlite_url}\n")
    monkeypatch.setenv("BILLING_DATABASE_URL", sqlite_url)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    code = block_containing("docs/configuration.md", 'Database.from_env("BILLING_")')
    with pytest.raises(Exception, match="DATABASE_URL"):  # the second line: nothing to read
        run_block(code, sqlite_url, namespace={"Database": Database})
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    namespace = run_block(code, sqlite_url, namespace={"Database": Database})
    assert namespace["db"].url == Database(sqlite_url).url


def test_the_pool_sizes_of_the_configuration_guide_are_taken(sqlite_url: str) -> None:
    """``pool_max_waiters=75`` beside a pool of 5 + 10 is what the Database keeps."""
    code = block_containing("docs/configuration.md", "pool_max_waiters=75")
    url = "postgresql+asyncpg://app@localhost/app"
    db = run_block(code, url, namespace={"Database": Database, "url": url})["db"]
    settings = db.settings
    assert (settings.pool_size, settings.max_overflow, settings.pool_max_waiters) == (5, 10, 75)


def test_the_apps_exception_handlers_answer_dbscopes_errors(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the guide's ``add_exception_handlers(app)``, dbscope's errors have handlers."""
    namespace = fastapi_page(sqlite_url, monkeypatch)
    run_block(
        block_containing("docs/fastapi.md", "for the whole app"),
        sqlite_url,
        namespace=namespace,
    )
    handled = set(namespace["app"].exception_handlers)
    assert {"DatabaseUnavailableError", "StatementTimeoutError", "ConstraintViolationError"} <= {
        error.__name__ for error in handled if isinstance(error, type)
    }


async def test_an_apps_own_lifespan_has_the_database_connected_inside_it(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guide's lifespan warms its caches after connecting and flushes before disposing."""
    namespace = fastapi_page(sqlite_url, monkeypatch)
    db, seen = namespace["db"], []

    async def warm_caches() -> None:
        seen.append(("warm", db.state))

    async def flush_metrics() -> None:
        seen.append(("flush", db.state))

    namespace.update(warm_caches=warm_caches, flush_metrics=flush_metrics)
    code = block_containing("docs/fastapi.md", "await warm_caches()")
    app = run_block(code, sqlite_url, namespace=namespace)["app"]
    async with app.router.lifespan_context(app):
        seen.append(("serving", db.state))
    assert seen == [("warm", "connected"), ("serving", "connected"), ("flush", "connected")]
    assert db.state == "disposed"


async def test_a_service_function_archives_a_note_in_the_callers_unit(
    database_url: str, connected: Database
) -> None:
    """``archive_note`` finds the unit's session with ``db.current_session()``."""
    code = block_containing("docs/fastapi.md", "async def archive_note")
    namespace = run_block(
        code, database_url, namespace={"db": connected, "update": update, **MODELS}
    )
    async with connected.transaction() as session:
        session.add(Note(id=1))
    async with connected.transaction():
        await namespace["archive_note"](1)
    async with connected.transaction() as session:
        assert await session.scalar(select(Note.archived).where(Note.id == 1)) is True


async def test_the_guides_create_all_makes_the_tables(
    database_url: str, tables: helpers.Tables
) -> None:
    """``run_sync(Base.metadata.create_all)`` in a transaction makes the models' tables."""
    code = block_containing("docs/fastapi.md", "run_sync(Base.metadata.create_all)")
    async with Database(database_url) as db:
        await tables.create_all(Base.metadata)  # so that the fixture drops them at the end
        async with helpers.admin(database_url) as connection:
            await connection.run_sync(Base.metadata.drop_all)
        await run_async_block(code, {"db": db, "Base": Base})
        async with helpers.admin(database_url) as connection:
            names = await connection.run_sync(lambda sync: inspect(sync).get_table_names())
    assert {"guide_notes", "guide_users", "guide_orders"} <= set(names)


def test_a_database_with_a_schema_keeps_it() -> None:
    """``Database(url, schema="app")`` runs every unit in the ``app`` schema."""
    url = "postgresql+asyncpg://app@localhost/app"
    code = block_containing("docs/fastapi.md", 'schema="app"')
    db = run_block(code, url, namespace={"Database": Database, "url": url})["db"]
    assert db.settings.postgres_schema == "app"


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_scripts_leased_connection_fetches_the_notes(
    database_url: str, connected: Database
) -> None:
    """The asyncpg connection ``db.lease()`` lends fetches the notes named by their ids."""
    async with connected.transaction() as session:
        session.add_all([Note(id=1, text="a"), Note(id=2, text="b"), Note(id=3, text="c")])
    code = block_containing("docs/scripts.md", "conn.fetch(").replace("notes", "guide_notes")
    namespace: dict[str, Any] = {"db": connected, "note_ids": [1, 3]}
    await run_async_block(code, namespace)
    assert [(row["id"], row["text"]) for row in namespace["rows"]] == [(1, "a"), (3, "c")]


async def test_parallel_reads_give_each_query_its_own_session(
    database_url: str, connected: Database
) -> None:
    """``db.parallel`` runs the users' and the orders' queries, each on its own session."""
    async with connected.transaction() as session:
        session.add_all([User(id=1), User(id=2)])
        await session.flush()
        session.add(Order(id=7, user_id=2))
    code = block_containing("docs/units-of-work.md", "await db.parallel(")
    namespace: dict[str, Any] = {"db": connected, "select": select, **MODELS}
    await run_async_block(code, namespace)
    assert (list(namespace["user_ids"]), list(namespace["order_ids"])) == ([1, 2], [7])


def documented_export(db: Database) -> dict[str, Any]:
    """The names the streaming guide's export block defines (``export_rows``, ``export``),
    run on ``db``."""
    code = block_containing("docs/units-of-work.md", "async def export_rows(")
    namespace: dict[str, Any] = {
        "db": db,
        "app": FastAPI(),
        "select": select,
        "AsyncIterator": AsyncIterator,
        "AsyncSession": AsyncSession,
        "StreamingResponse": StreamingResponse,
        **MODELS,
    }
    return run_block(code, "sqlite+aiosqlite://", namespace=namespace)


async def test_the_documented_export_holds_a_batch_of_notes_not_the_table(
    connected: Database,
) -> None:
    """``export_rows`` streams 3,000 notes, each once, and holds no more than a batch of them
    at its first line (before, without ``yield_per``: all 3,000, read before the first)."""
    async with connected.transaction() as session:
        session.add_all([Note(id=n, title=f"n{n}") for n in range(1, 3001)])
    namespace = documented_export(connected)
    held: list[int] = []

    async def counted(session: AsyncSession) -> AsyncIterator[bytes]:
        async for line in namespace["export_rows"](session):
            if not held:
                held.append(len(session.identity_map))
            yield line

    lines = [line async for line in connected.stream(counted, read_only=True)]
    assert len(lines) == 3000
    assert held[0] <= 1000


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_the_documented_export_leaves_sqlite_writers_free_while_it_streams(
    connected: Database, database_url: str
) -> None:
    """The guide's export only reads: while its response streams (as long as the client takes
    to read it), another writer takes the SQLite file's write lock at once. A unit that may
    write would hold that lock to the stream's end, and the app's writes would wait out the
    busy timeout, then fail."""
    async with connected.transaction() as session:
        session.add_all([Note(id=n, title=f"n{n}") for n in range(1, 4)])
    namespace = documented_export(connected)
    response = await namespace["export"]()
    path = make_url(database_url).database or ""
    free: list[bool] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            other = sqlite3.connect(path, isolation_level=None, timeout=0)
            try:
                other.execute("BEGIN IMMEDIATE")
                free.append(True)
            except sqlite3.OperationalError:
                free.append(False)
            finally:
                other.close()

    scope = {"type": "http", "method": "GET", "path": "/notes.csv", "headers": []}
    await response(scope, receive, send)
    assert free == [True] * 3


@pytest.mark.parametrize("db_backend", ["asyncpg", "asyncmy"])
def test_the_read_only_and_slow_session_aliases_are_dependencies(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The guide's ``ReadSession`` and ``SlowSession`` are Annotated session dependencies."""
    namespace = fastapi_page(database_url, monkeypatch)
    code = block_containing("docs/units-of-work.md", "SlowSession = ")
    namespace = run_block(code, database_url, namespace=namespace)
    for alias in ("ReadSession", "SlowSession"):
        dependency = namespace[alias].__metadata__[0]
        assert callable(dependency.dependency)


def test_a_retried_endpoint_is_a_route_of_the_app(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``@db.retry`` below the route decorator leaves ``POST /transfers`` on the app."""

    class TransferIn(BaseModel):
        amount: int

    class TransferOut(BaseModel):
        balance: int

    namespace = fastapi_page(sqlite_url, monkeypatch)
    namespace.update(TransferIn=TransferIn, TransferOut=TransferOut)
    code = block_containing("docs/units-of-work.md", "@db.retry(attempts=3)")
    app: FastAPI = run_block(code, sqlite_url, namespace=namespace)["app"]
    assert [getattr(route, "path", None) for route in app.routes][-1] == "/transfers"


async def test_the_migration_guides_session_alias_is_the_databases_session(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new core/database.py reads DATABASE_URL and gives a Session alias over it."""
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    code = block_containing("docs/migration.md", "# core/database.py\n")
    namespace = run_block(code, sqlite_url)
    assert namespace["db"].url == Database(sqlite_url).url
    assert namespace["Session"].__metadata__[0].dependency == namespace["db"].session


# -- docs/testing.md: the plugin's set-up through conftest.py, under each async plugin --------

MYAPP = {
    "myapp/__init__.py": "",
    "myapp/db.py": (
        "from dbscope import Database\n\n"
        'db = Database("postgresql+asyncpg://nobody@127.0.0.1:9/production")\n'
    ),
    "myapp/main.py": (
        "from fastapi import Depends, FastAPI\n"
        "from sqlalchemy import text\n\n"
        "def create_app(db):\n"
        "    app = FastAPI(lifespan=db.lifespan)\n\n"
        '    @app.get("/health")\n'
        "    async def health() -> dict[str, str]:\n"
        '        return {"status": "ok"}\n\n'
        '    @app.get("/one")\n'
        "    async def one(session=Depends(db.session)) -> dict[str, int]:\n"
        '        return {"one": (await session.execute(text("SELECT 1"))).scalar_one()}\n\n'
        "    return app\n"
    ),
}


@pytest.mark.parametrize("async_plugin", ["pytest-asyncio", "anyio"])
@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
def test_the_testing_guides_conftest_runs_its_health_test(
    pytester: pytest.Pytester, project_url: str, async_plugin: str
) -> None:
    """The guide's conftest.py fixtures (and raise_on_lazy_load) with its health test pass."""
    guide = "docs/testing.md"
    conftest = block_containing(guide, "def dbscope_app():")
    if async_plugin == "anyio":
        conftest += block_containing(guide, "def anyio_backend():")
        test = block_containing(guide, "pytestmark = pytest.mark.anyio")
    else:
        test = block_containing(guide, "pytest.mark.asyncio\n\n\nasync def test_health")
    conftest += block_containing(guide, "def dbscope_raise_on_lazy_load():")
    for name, source in MYAPP.items():
        (pytester.path / name).parent.mkdir(exist_ok=True)
        (pytester.path / name).write_text(source)
    pytester.makeconftest(conftest)
    pytester.makepyfile(test_health=test)
    loop_scope = "asyncio_default_fixture_loop_scope = function\n"
    pytester.makeini(
        "[pytest]\npythonpath = .\nfilterwarnings = error\n"
        + (loop_scope if async_plugin == "pytest-asyncio" else "")
    )
    result = plugin_projects.run(pytester, async_plugin, project_url, in_process=True)
    result.assert_outcomes(passed=1)


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
def test_the_testing_guides_requests_at_once_run_on_a_database_of_their_own(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """The guide's test of requests at once, on the app's own Database and pool (beside the
    guide's conftest.py, whose Database names a server that does not exist), passes."""
    guide = "docs/testing.md"
    for name, source in MYAPP.items():
        (pytester.path / name).parent.mkdir(exist_ok=True)
        (pytester.path / name).write_text(source)
    pytester.makeconftest(block_containing(guide, "def dbscope_app():"))
    pytester.makepyfile(test_at_once=block_containing(guide, "def test_requests_at_once_share"))
    pytester.makeini(
        "[pytest]\npythonpath = .\nfilterwarnings = error\n"
        "asyncio_default_fixture_loop_scope = function\n"
    )
    result = plugin_projects.run(pytester, "pytest-asyncio", project_url, in_process=True)
    result.assert_outcomes(passed=1)
