"""The pytest plugin, run by pytest itself (pytester) on small projects against real databases.

Each test writes a project (an app, its tests, its settings) and runs pytest on it in a
subprocess, under pytest-asyncio or anyio, then reads the outcome and looks at the database
from outside. The projects' tables are named ``ptp_*``, apart from every other test's.
"""

from __future__ import annotations

import asyncio
import importlib
import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

# pytester restores sys.modules after each test, so a C extension first imported during one
# test is imported anew by the next, which crashes the interpreter. Import every driver and
# its dialect before any test runs.
for _module in (
    "asyncpg",
    "psycopg",
    "asyncmy",
    "aiosqlite",
    "sqlalchemy.dialects.postgresql.asyncpg",
    "sqlalchemy.dialects.postgresql.psycopg",
    "sqlalchemy.dialects.mysql.asyncmy",
    "sqlalchemy.dialects.sqlite.aiosqlite",
):
    importlib.import_module(_module)

ASYNC_PLUGINS = ("pytest-asyncio", "anyio")
MARK = {"pytest-asyncio": "pytest.mark.asyncio", "anyio": "pytest.mark.anyio"}

# The app of every project. Its Database names a server that does not exist: the plugin
# binds it to the test database, so its own URL is never used.
APP = """
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import ForeignKey, String, event, func, select
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from dbscope import Database


class Base(AsyncAttrs, DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "ptp_items"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Parent(Base):
    __tablename__ = "ptp_parents"
    id: Mapped[int] = mapped_column(primary_key=True)
    children: Mapped[list["Child"]] = relationship()


class Child(Base):
    __tablename__ = "ptp_children"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("ptp_parents.id"))


CREATE_ALL_RUNS = []
event.listen(Base.metadata, "after_create", lambda *args, **kwargs: CREATE_ALL_RUNS.append(1))

db = Database("postgresql+asyncpg://nobody@127.0.0.1:9/production")
app = FastAPI(lifespan=db.lifespan)
Session = Annotated[AsyncSession, Depends(db.session)]


@app.get("/items")
async def list_items(session: Session) -> list[str]:
    return list(await session.scalars(select(Item.name).order_by(Item.id)))


@app.post("/items/{name}")
async def add_item(name: str, session: Session) -> int:
    session.add(Item(name=name))
    await session.flush()
    return await session.scalar(select(func.count()).select_from(Item))


@app.post("/items/{name}/fail")
async def add_item_then_fail(name: str, session: Session) -> None:
    session.add(Item(name=name))
    await session.flush()
    raise HTTPException(404, "written, then not found")


@app.get("/parents/{parent_id}/children")
async def count_children(parent_id: int, session: Session) -> int:
    parent = await session.get(Parent, parent_id)
    return len(await parent.awaitable_attrs.children)
"""

# The three identical tests of the issue, and the app's commits and rollbacks in between.
ISOLATION_TESTS = """
import pytest
from sqlalchemy import func, select

import plugin_app
from plugin_app import Item

pytestmark = MARK


async def count(session):
    return await session.scalar(select(func.count()).select_from(Item))


async def insert_and_commit_twice(session):
    session.add(Item(name="first"))
    await session.commit()
    assert await count(session) == 1
    session.add(Item(name="second"))
    await session.commit()
    assert await count(session) == 2


async def test_one(dbscope_session):
    await insert_and_commit_twice(dbscope_session)


async def test_two(dbscope_session):
    await insert_and_commit_twice(dbscope_session)


async def test_three(dbscope_session):
    await insert_and_commit_twice(dbscope_session)


async def test_an_app_rollback_keeps_the_tests_rows(dbscope_session, dbscope_client):
    dbscope_session.add(Item(name="the test's"))
    await dbscope_session.commit()

    failed = await dbscope_client.post("/items/doomed/fail")

    assert failed.status_code == 404
    assert await count(dbscope_session) == 1
    assert (await dbscope_client.get("/items")).json() == ["the test's"]
    assert (await dbscope_client.post("/items/kept")).json() == 2


async def test_rows_cross_between_the_test_and_the_app(dbscope_session, dbscope_client):
    dbscope_session.add(Item(name="from-the-test"))
    await dbscope_session.commit()

    seen_by_the_app = (await dbscope_client.get("/items")).json()
    await dbscope_client.post("/items/from-the-app")

    names = list(await dbscope_session.scalars(select(Item.name).order_by(Item.id)))
    assert seen_by_the_app == ["from-the-test"]
    assert names == ["from-the-test", "from-the-app"]


async def test_the_session_is_the_current_session_of_the_apps_database(dbscope_session):
    assert plugin_app.db.current_session() is dbscope_session


async def test_nothing_is_left_by_the_tests_before(dbscope_session):
    assert await count(dbscope_session) == 0
    assert plugin_app.CREATE_ALL_RUNS == [1]
"""

# A project that does not use dbscope's plugin at all.
PLAIN_INI = "[pytest]\nasyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n"

ANYIO_CONFTEST = """
import pytest


@pytest.fixture(scope="session")
def anyio_backend():
    return "asyncio"
"""


def ini(async_plugin: str, *extra: str) -> str:
    """The project's pytest.ini: the app, its Database and its tables, strict as ours."""
    lines = [
        "[pytest]",
        "dbscope_app = plugin_app:app",
        "dbscope_database = plugin_app:db",
        "dbscope_metadata = plugin_app:Base.metadata",
        "pythonpath = .",
        "filterwarnings = error",
        *extra,
    ]
    if async_plugin == "pytest-asyncio":
        lines += ["asyncio_mode = strict", "asyncio_default_fixture_loop_scope = function"]
    return "\n".join(lines) + "\n"


def write_project(
    pytester: pytest.Pytester, async_plugin: str, tests: str, *ini_lines: str
) -> None:
    """The app, ``tests`` as test_project.py (MARK replaced), pytest.ini and a conftest."""
    pytester.makepyfile(
        plugin_app=textwrap.dedent(APP),
        test_project=textwrap.dedent(tests).replace("MARK", MARK[async_plugin]),
    )
    pytester.makefile(".ini", pytest=ini(async_plugin, *ini_lines))
    if async_plugin == "anyio":
        pytester.makeconftest(ANYIO_CONFTEST)


def run(
    pytester: pytest.Pytester,
    async_plugin: str,
    url: str | None,
    *args: str,
    in_process: bool = False,
) -> pytest.RunResult:
    """Run pytest on the project, with ``url`` in DBSCOPE_TEST_URL.

    In a subprocess, as a user's run, unless ``in_process``, which is quicker and serves the
    runs that need no database server.
    """
    # An anyio project has no pytest-asyncio, as it would be in a project of its own.
    plugins = ("-p", "no:asyncio") if async_plugin == "anyio" else ()
    arguments = ("-p", "no:cacheprovider", *plugins, *args)
    with pytest.MonkeyPatch.context() as environment:
        if url is None:
            environment.delenv("DBSCOPE_TEST_URL", raising=False)
        else:
            environment.setenv("DBSCOPE_TEST_URL", url)
        if in_process:
            return pytester.runpytest_inprocess(*arguments)
        return pytester.runpytest_subprocess(*arguments, timeout=120)


def run_database(url: str) -> str:
    """The URL of the database the plugin runs the tests in: ``url``'s name, then ``_test``."""
    parsed = make_url(url)
    name = parsed.database or ""
    if parsed.get_backend_name() == "sqlite":
        path = Path(name)
        name = str(path.with_name(f"{path.stem}_test{path.suffix}"))
    else:
        name += "_test"
    return parsed.set(database=name).render_as_string(hide_password=False)


def on_server(url: str, statement: str) -> list[Any]:
    """Run ``statement`` in autocommit on the server of ``url``, outside any database of it.

    PostgreSQL: on its ``postgres`` database; MariaDB/MySQL: on a connection naming none.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        server = parsed.set(database="postgres")
    else:
        server = parsed._replace(database=None)

    async def execute() -> list[Any]:
        engine = create_async_engine(server, isolation_level="AUTOCOMMIT")
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(statement))
                return list(result) if result.returns_rows else []
        finally:
            await engine.dispose()

    return asyncio.run(execute())


def database_exists(url: str) -> bool:
    """Whether the database (or SQLite file) ``url`` names exists, seen from outside."""
    parsed = make_url(url)
    name = parsed.database or ""
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return Path(name).exists()
    if backend == "postgresql":
        query = f"SELECT 1 FROM pg_database WHERE datname = '{name}'"
    else:
        query = f"SELECT 1 FROM information_schema.schemata WHERE schema_name = '{name}'"
    return bool(on_server(url, query))


def create_database(url: str) -> None:
    """Make the database ``url`` names, as someone other than dbscope would."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database or "").touch()
    else:
        on_server(url, f"CREATE DATABASE {parsed.database}")


def drop_database(url: str) -> None:
    """Remove the database (or the SQLite file and its journals) ``url`` names, if it exists."""
    parsed = make_url(url)
    name = parsed.database or ""
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(name + suffix).unlink(missing_ok=True)
    elif backend == "postgresql":
        on_server(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    else:
        on_server(url, f"DROP DATABASE IF EXISTS {name}")


def execute(url: str, *statements: str) -> None:
    """Run ``statements`` in one transaction in the database at ``url``, and commit."""

    async def run_all() -> None:
        engine = create_async_engine(url)
        try:
            async with engine.begin() as connection:
                for statement in statements:
                    await connection.execute(text(statement))
        finally:
            await engine.dispose()

    asyncio.run(run_all())


def rows(url: str, table: str) -> list[tuple[Any, ...]]:
    """Every row of ``table`` in the database at ``url``, in id order."""

    async def select_all() -> list[tuple[Any, ...]]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                result = await connection.execute(text(f"SELECT * FROM {table} ORDER BY id"))
                return [tuple(row) for row in result]
        finally:
            await engine.dispose()

    return asyncio.run(select_all())


def table_names(url: str) -> set[str]:
    """The ptp_* tables in the database at ``url``, seen from a connection of our own."""

    async def names() -> set[str]:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as connection:
                found = await connection.run_sync(lambda c: inspect(c).get_table_names())
        finally:
            await engine.dispose()
        return {name for name in found if name.startswith("ptp_")}

    return asyncio.run(names())


def drop_tables(url: str, *names: str) -> None:
    """Drop the given tables if they exist (a kept or half-made project's)."""
    execute(url, *(f"DROP TABLE IF EXISTS {name}" for name in names))


# The app's table of items, with a row of its own, as in a database that holds data.
ITEMS_WITH_A_ROW = (
    "CREATE TABLE ptp_items (id INTEGER PRIMARY KEY, name VARCHAR(50))",
    "INSERT INTO ptp_items (id, name) VALUES (1, 'kept')",
)


@pytest.fixture
def project_url(database_url: str) -> Iterator[str]:
    """The database URL, with no ptp_* table and no run database left by an earlier run."""
    tables = ("ptp_children", "ptp_parents", "ptp_items", "ptp_migrated", "ptp_notes")
    drop_tables(database_url, *tables, "ptp_alembic_version", "ptp_other")
    drop_database(run_database(database_url))
    yield database_url
    drop_database(run_database(database_url))


@pytest.mark.parametrize("async_plugin", ASYNC_PLUGINS)
def test_every_test_runs_in_a_transaction_of_its_own(
    pytester: pytest.Pytester, project_url: str, async_plugin: str
) -> None:
    """Identical tests see only their own rows; app commits and rollbacks are savepoints."""
    write_project(pytester, async_plugin, ISOLATION_TESTS)

    result = run(pytester, async_plugin, project_url)

    result.assert_outcomes(passed=7)
    assert table_names(project_url) == set()


@pytest.mark.parametrize("async_plugin", ASYNC_PLUGINS)
@pytest.mark.parametrize("db_backend", ["asyncpg"])
def test_a_session_wide_loop_shares_one_connection(
    pytester: pytest.Pytester, project_url: str, async_plugin: str
) -> None:
    """With dbscope_loop_scope = session, tests borrow one pooled connection, still isolated."""
    shared = """
    import pytest
    from sqlalchemy import text

    pytestmark = MARK
    BACKENDS = set()

    @pytest.mark.parametrize("n", range(3))
    async def test_backend(dbscope_session, n):
        BACKENDS.add(await dbscope_session.scalar(text("SELECT pg_backend_pid()")))
        assert len(BACKENDS) == 1
    """
    write_project(pytester, async_plugin, ISOLATION_TESTS)
    pytester.makepyfile(test_shared=textwrap.dedent(shared).replace("MARK", MARK[async_plugin]))
    loop = ["dbscope_loop_scope = session"]
    if async_plugin == "pytest-asyncio":
        loop.append("asyncio_default_test_loop_scope = session")
    pytester.makefile(".ini", pytest=ini(async_plugin, *loop))

    result = run(pytester, async_plugin, project_url)

    result.assert_outcomes(passed=10)


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_tables_are_kept_with_the_keep_option(pytester: pytest.Pytester, project_url: str) -> None:
    """--dbscope-keep-tables leaves the run's database and its tables in place, empty."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", project_url, "--dbscope-keep-tables")

    result.assert_outcomes(passed=7)
    kept = run_database(project_url)
    assert table_names(kept) == {"ptp_items", "ptp_parents", "ptp_children"}
    assert rows(kept, "ptp_items") == []


# -- the run's own database ---------------------------------------------------------------------

OWN_DATABASE_TEST = """
import os

import pytest

pytestmark = MARK


async def test_the_engine_is_on_the_runs_own_database(dbscope_engine, dbscope_session):
    assert dbscope_engine.url.database == os.environ["PTP_RUN_DATABASE"]
"""

CRASHING_TEST = """
import os

import pytest

pytestmark = MARK


async def test_the_process_dies_mid_run(dbscope_session):
    os._exit(3)
"""

EXISTING_ROW_TEST = """
import pytest
from sqlalchemy import select

from plugin_app import Item

pytestmark = MARK


async def test_the_existing_row_is_there(dbscope_session):
    assert list(await dbscope_session.scalars(select(Item.name))) == ["kept"]
"""


def test_a_database_holding_the_apps_tables_keeps_its_rows_and_tables(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """The database dbscope_url names is never touched: its tables and rows outlive the run."""
    execute(project_url, *ITEMS_WITH_A_ROW)
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", project_url)

    result.assert_outcomes(passed=7)
    assert table_names(project_url) == {"ptp_items"}
    assert rows(project_url, "ptp_items") == [(1, "kept")]


def test_the_tests_run_in_a_database_of_their_own_dropped_after_the_run(
    pytester: pytest.Pytester, project_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests run in the named database's name_test, which is gone when the run ends."""
    own = run_database(project_url)
    monkeypatch.setenv("PTP_RUN_DATABASE", make_url(own).database or "")
    write_project(pytester, "pytest-asyncio", OWN_DATABASE_TEST)

    result = run(pytester, "pytest-asyncio", project_url)

    result.assert_outcomes(passed=1)
    assert not database_exists(own)


def test_the_reuse_option_keeps_the_database_for_the_next_run(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """--dbscope-reuse-db keeps the run's database and its empty tables; the next run uses it."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    first = run(pytester, "pytest-asyncio", project_url, "--dbscope-reuse-db")
    second = run(pytester, "pytest-asyncio", project_url, "--dbscope-reuse-db")

    first.assert_outcomes(passed=7)
    second.assert_outcomes(passed=7)
    second.stdout.fnmatch_lines(["dbscope: reusing the test database *kept by an earlier run*"])
    own = run_database(project_url)
    assert table_names(own) == {"ptp_items", "ptp_parents", "ptp_children"}
    assert rows(own, "ptp_items") == []


def test_a_database_left_by_a_crashed_run_is_dropped_and_made_anew(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """A name_test that dbscope made and a dead run left behind is remade, and the run says so."""
    write_project(pytester, "pytest-asyncio", CRASHING_TEST)
    crashed = run(pytester, "pytest-asyncio", project_url)
    left = database_exists(run_database(project_url))
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", project_url)

    assert (crashed.ret, left) == (3, True)
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["dbscope: dropped the test database *left by an earlier run*"])
    assert not database_exists(run_database(project_url))


@pytest.mark.parametrize("db_backend", ["asyncpg"])
def test_a_left_database_that_a_session_uses_is_not_dropped(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """A name_test left behind but in use (another run's, say) stays; the error says why."""
    write_project(pytester, "pytest-asyncio", CRASHING_TEST)
    run(pytester, "pytest-asyncio", project_url)
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    own = make_url(run_database(project_url))
    other_session = own.set(drivername="postgresql").render_as_string(hide_password=False)

    with psycopg.connect(other_session):
        result = run(pytester, "pytest-asyncio", project_url, "-k", "test_one")

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*the test database '{own.database}'*other users*if another test run uses it*"]
    )
    assert database_exists(run_database(project_url))


def test_tables_it_did_not_make_are_refused_naming_them_and_the_option(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """The app's tables in a name_test someone else made stop the run; they and it stay."""
    own = run_database(project_url)
    create_database(own)
    execute(own, *ITEMS_WITH_A_ROW)
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", project_url)

    result.assert_outcomes(errors=7)
    name = make_url(own).database
    result.stdout.fnmatch_lines(
        [f"*the test database '{name}'* the app's tables ptp_items,*--dbscope-use-existing-tables*"]
    )
    assert rows(own, "ptp_items") == [(1, "kept")]


def test_the_existing_tables_option_runs_on_them_and_drops_only_its_own(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """--dbscope-use-existing-tables runs on them; only the tables the run made are dropped."""
    own = run_database(project_url)
    create_database(own)
    execute(own, *ITEMS_WITH_A_ROW)
    write_project(pytester, "pytest-asyncio", EXISTING_ROW_TEST)

    result = run(pytester, "pytest-asyncio", project_url, "--dbscope-use-existing-tables")

    result.assert_outcomes(passed=1)
    assert table_names(own) == {"ptp_items"}
    assert rows(own, "ptp_items") == [(1, "kept")]


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_without_tables_to_make_the_tests_run_in_the_named_database(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """No dbscope_metadata nor Alembic: no database is made, the named one is used as it is."""
    execute(project_url, *ITEMS_WITH_A_ROW)
    write_project(pytester, "pytest-asyncio", EXISTING_ROW_TEST)
    pytester.makefile(
        ".ini",
        pytest="[pytest]\ndbscope_database = plugin_app:db\npythonpath = .\n"
        "asyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n",
    )

    result = run(pytester, "pytest-asyncio", project_url)

    result.assert_outcomes(passed=1)
    assert rows(project_url, "ptp_items") == [(1, "kept")]
    assert not database_exists(run_database(project_url))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (
            "postgresql+asyncpg://postgres@127.0.0.1:9/" + "d" * 60,
            "*'ddd*d_test'*longer than the 63 bytes postgresql allows*",
        ),
        ("mysql+asyncmy://root@127.0.0.1:9", "*names no database*e.g. .../app*app_test*"),
        ("sqlite+aiosqlite:///:memory:", "*in-memory SQLite database*name a file*"),
    ],
)
def test_a_url_no_test_database_can_be_named_after_fails_saying_why(
    pytester: pytest.Pytester, url: str, message: str
) -> None:
    """A name too long, no name, or no file: the error says what to write instead."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", url, "-k", "test_one", in_process=True)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*Traceback*")


SCHEMA_MODELS = """
from sqlalchemy import Column, Integer, MetaData, Table

metadata = MetaData(schema="ptp_schema")
things = Table("ptp_things", metadata, Column("id", Integer, primary_key=True))
"""

SCHEMA_TEST = """
import pytest
from sqlalchemy import func, insert, select

from schema_models import things

pytestmark = MARK


async def test_a_table_in_a_schema_takes_rows(dbscope_session):
    await dbscope_session.execute(insert(things).values(id=1))
    assert await dbscope_session.scalar(select(func.count()).select_from(things)) == 1
"""


@pytest.mark.parametrize("db_backend", ["asyncpg"])
def test_the_schemas_of_the_metadata_are_made_in_the_runs_database(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """On PostgreSQL, MetaData(schema=...) works in the run's new database: the schema is made."""
    write_project(pytester, "pytest-asyncio", SCHEMA_TEST)
    pytester.makepyfile(schema_models=textwrap.dedent(SCHEMA_MODELS))
    pytester.makefile(
        ".ini",
        pytest="[pytest]\ndbscope_metadata = schema_models:metadata\npythonpath = .\n"
        "asyncio_default_fixture_loop_scope = function\nfilterwarnings = error\n",
    )

    result = run(pytester, "pytest-asyncio", project_url)

    result.assert_outcomes(passed=1)


# -- settings and messages -----------------------------------------------------------------------


def test_a_missing_url_fails_with_instructions(pytester: pytest.Pytester) -> None:
    """Without a URL, the error names the option, the variable and the setting; no KeyError."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", None, "-k", "test_one", in_process=True)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*--dbscope-url=URL*DBSCOPE_TEST_URL*dbscope_url*conftest.py*"])
    result.stdout.no_fnmatch_line("*KeyError*")


def test_the_option_wins_over_the_variable_and_the_variable_over_the_ini(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--dbscope-url, then DBSCOPE_TEST_URL, then dbscope_url: the first one set is used."""
    pytester.makepyfile(
        test_url="""
        import os


        def test_url(dbscope_url):
            assert dbscope_url == os.environ["EXPECTED_URL"]
        """
    )
    cases = [
        (["dbscope_url = sqlite:///ini.db"], None, (), "sqlite:///ini.db"),
        (["dbscope_url = sqlite:///ini.db"], "sqlite:///env.db", (), "sqlite:///env.db"),
        (
            ["dbscope_url = sqlite:///ini.db"],
            "sqlite:///env.db",
            ("--dbscope-url=sqlite:///option.db",),
            "sqlite:///option.db",
        ),
    ]
    for lines, env_url, args, expected in cases:
        pytester.makefile(".ini", pytest=ini("pytest-asyncio", *lines))
        monkeypatch.setenv("EXPECTED_URL", expected)
        run(pytester, "pytest-asyncio", env_url, *args, in_process=True).assert_outcomes(passed=1)


def test_a_test_in_another_loop_fails_naming_the_setting(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A test whose loop is not the fixtures' loop fails before it runs, naming the fix."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS, "dbscope_loop_scope = module")

    result = run(
        pytester, "pytest-asyncio", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", in_process=True
    )

    result.assert_outcomes(errors=7)
    result.stdout.fnmatch_lines(["*loop of scope 'function'*dbscope_loop_scope*"])


@pytest.mark.parametrize("async_plugin", ASYNC_PLUGINS)
def test_a_test_its_plugin_does_not_run_fails_saying_how_to_mark_it(
    pytester: pytest.Pytester, tmp_path: Path, async_plugin: str
) -> None:
    """An unmarked async test asking for dbscope_session fails with how to mark it."""
    unmarked = ISOLATION_TESTS.replace("pytestmark = MARK", "")
    write_project(pytester, async_plugin, unmarked)

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run(pytester, async_plugin, url, "-k", "test_one", in_process=True)

    result.assert_outcomes(errors=1)
    expected = "@pytest.mark.asyncio" if async_plugin == "pytest-asyncio" else "@pytest.mark.anyio"
    result.stdout.fnmatch_lines([f"*{expected}*"])


def test_the_client_needs_the_apps_database(pytester: pytest.Pytester, tmp_path: Path) -> None:
    """dbscope_app without dbscope_database fails: the app's sessions would not join."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    pytester.makefile(
        ".ini",
        pytest="[pytest]\ndbscope_app = plugin_app:app\npythonpath = .\n"
        "asyncio_default_fixture_loop_scope = function\n",
    )

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run(pytester, "pytest-asyncio", url, "-k", "test_rows_cross", in_process=True)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*dbscope_database = 'myapp.db:db'*"])


@pytest.mark.parametrize(
    ("setting", "test", "message"),
    [
        (
            "dbscope_database = plugin_app:db",
            "test_rows_cross",
            "*dbscope_client needs your app: set dbscope_app*",
        ),
        (
            "dbscope_app = plugin_app:application",
            "test_rows_cross",
            "*dbscope_app = 'plugin_app:application': plugin_app has no attribute*",
        ),
        (
            "dbscope_app = no_such_package.main:app",
            "test_rows_cross",
            "*there is no module 'no_such_package.main' on sys.path*pythonpath*",
        ),
        (
            "dbscope_metadata = plugin_app:app",
            "test_one",
            "*dbscope_metadata = 'plugin_app:app' is a FastAPI, not a MetaData*",
        ),
    ],
)
def test_a_wrong_or_missing_setting_fails_naming_it(
    pytester: pytest.Pytester, tmp_path: Path, setting: str, test: str, message: str
) -> None:
    """A missing app, or a name that leads nowhere, fails with the setting and its value."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    pytester.makefile(
        ".ini",
        pytest=f"[pytest]\n{setting}\npythonpath = .\n"
        "asyncio_default_fixture_loop_scope = function\n",
    )

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run(pytester, "pytest-asyncio", url, "-k", test, in_process=True)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines([message])
    result.stdout.no_fnmatch_line("*Traceback*")


LAZY_LOAD_TEST = """
import pytest

from dbscope import LazyLoadError
from plugin_app import Child, Parent

pytestmark = MARK


async def test_a_lazy_load_in_the_app_raises(dbscope_session, dbscope_client):
    parent = Parent(children=[Child()])
    dbscope_session.add(parent)
    await dbscope_session.commit()

    with pytest.raises(LazyLoadError, match="Parent.children"):
        await dbscope_client.get(f"/parents/{parent.id}/children")
"""


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_the_lazy_load_option_makes_every_lazy_load_raise(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """--dbscope-raise-on-lazy-load turns an awaited lazy load into LazyLoadError; opt-in."""
    write_project(pytester, "pytest-asyncio", LAZY_LOAD_TEST)

    strict = run(pytester, "pytest-asyncio", project_url, "--dbscope-raise-on-lazy-load")
    default = run(pytester, "pytest-asyncio", project_url)

    strict.assert_outcomes(passed=1)
    default.assert_outcomes(failed=1)
    default.stdout.fnmatch_lines(["*DID NOT RAISE*"])


ALEMBIC_INI = """
[alembic]
script_location = %(here)s/migrations

[loggers]
keys = root

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console

[handler_console]
class = StreamHandler
args = (sys.stderr,)
formatter = generic

[formatter_generic]
format = %(levelname)s %(message)s
"""

# Alembic's async template, reduced: the URL comes from sqlalchemy.url.
ALEMBIC_ENV = """
import asyncio

from alembic import context
from sqlalchemy.ext.asyncio import create_async_engine


def run(connection):
    context.configure(connection=connection, version_table="ptp_alembic_version")
    with context.begin_transaction():
        context.run_migrations()


async def main():
    engine = create_async_engine(context.config.get_main_option("sqlalchemy.url"))
    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()
    await engine.dispose()


asyncio.run(main())
"""

ALEMBIC_VERSION = """
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade():
    op.create_table("ptp_migrated", sa.Column("id", sa.Integer, primary_key=True))


def downgrade():
    op.drop_table("ptp_migrated")
"""

MIGRATED_TEST = """
import pytest
from sqlalchemy import text

pytestmark = MARK


@pytest.mark.parametrize("n", range(2))
async def test_the_migrated_table_is_there_and_empty(dbscope_session, n):
    assert (await dbscope_session.scalar(text("SELECT count(*) FROM ptp_migrated"))) == 0
    await dbscope_session.execute(text("INSERT INTO ptp_migrated (id) VALUES (1)"))
    await dbscope_session.commit()
"""


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
def test_alembic_migrations_make_the_tables_in_the_runs_database(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """dbscope_alembic_config upgrades the run's database to head; it goes after the run."""
    write_project(pytester, "pytest-asyncio", MIGRATED_TEST)
    pytester.makefile(
        ".ini",
        pytest="[pytest]\npythonpath = .\nfilterwarnings = error\n"
        "asyncio_default_fixture_loop_scope = function\n"
        "dbscope_alembic_config = alembic.ini\n",
    )
    pytester.makefile(".ini", alembic=ALEMBIC_INI)
    versions = pytester.mkdir("migrations") / "versions"
    versions.mkdir()
    (pytester.path / "migrations" / "env.py").write_text(ALEMBIC_ENV)
    (versions / "0001_migrated.py").write_text(ALEMBIC_VERSION)

    result = run(pytester, "pytest-asyncio", project_url)

    result.assert_outcomes(passed=2)
    assert table_names(project_url) == set()
    assert not database_exists(run_database(project_url))


def test_the_report_header_names_the_database_without_its_password(
    pytester: pytest.Pytester,
) -> None:
    """The header line shows the test database's URL with the password masked."""
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    pytester.makefile(".ini", pytest=PLAIN_INI)

    url = "postgresql+asyncpg://app:s3cret@db.internal/test"
    result = run(pytester, "pytest-asyncio", url, in_process=True)

    result.stdout.fnmatch_lines(["dbscope: postgresql+asyncpg://app:***@db.internal/test*"])
    assert "s3cret" not in result.stdout.str()


def test_the_report_header_hides_a_password_given_in_the_query(pytester: pytest.Pytester) -> None:
    """A password passed as ?password=... is not in the header either."""
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    pytester.makefile(".ini", pytest=PLAIN_INI)

    url = "postgresql+asyncpg://app@db.internal/test?password=S3cret"
    result = run(pytester, "pytest-asyncio", url, in_process=True)

    result.stdout.fnmatch_lines(["dbscope: postgresql+asyncpg://app:***@db.internal/test *"])
    assert "S3cret" not in result.stdout.str()


def test_a_project_without_settings_is_untouched(pytester: pytest.Pytester) -> None:
    """Installed but unused, the plugin adds no header line and changes no outcome."""
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    pytester.makefile(".ini", pytest=PLAIN_INI)

    result = run(pytester, "pytest-asyncio", None, in_process=True)

    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("dbscope:*")


DOCUMENTED_APP = {
    "myapp/__init__.py": "",
    "myapp/db.py": """
from dbscope import Database

db = Database("postgresql+asyncpg://nobody@127.0.0.1:9/production")
""",
    "myapp/models.py": """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "ptp_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))
""",
    "myapp/main.py": """
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from myapp.db import db
from myapp.models import Note

app = FastAPI(lifespan=db.lifespan)
Session = Annotated[AsyncSession, Depends(db.session)]


class NoteIn(BaseModel):
    text: str


@app.post("/notes", status_code=201)
async def post_note(note: NoteIn, session: Session) -> None:
    session.add(Note(text=note.text))
""",
}


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
def test_the_documented_set_up_runs_as_written(pytester: pytest.Pytester, project_url: str) -> None:
    """docs/testing.md's set-up, its first test and its unittest example pass as written."""
    guide = (Path(__file__).parent.parent / "docs" / "testing.md").read_text()
    settings = re.findall(r"```toml\n(.*?)```", guide, flags=re.DOTALL)[0]
    blocks = re.findall(r"```python\n(.*?)```", guide, flags=re.DOTALL)
    first_test = blocks[0]
    unittest_example = next(block for block in blocks if "IsolatedAsyncioTestCase" in block)
    for name, source in DOCUMENTED_APP.items():
        (pytester.path / name).parent.mkdir(exist_ok=True)
        (pytester.path / name).write_text(textwrap.dedent(source))
    pytester.makepyprojecttoml(settings)
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_notes.py").write_text(first_test)
    documented_url = "postgresql+asyncpg://postgres@localhost/test"
    assert documented_url in unittest_example
    unittest_example = unittest_example.replace(documented_url, project_url)
    (pytester.path / "tests" / "test_unittest_notes.py").write_text(unittest_example)

    result = run(pytester, "pytest-asyncio", project_url)

    result.assert_outcomes(passed=2)
    assert table_names(project_url) == set()
