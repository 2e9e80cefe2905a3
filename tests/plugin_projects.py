"""The small projects the pytest plugin's tests write and run pytest on, with pytester.

Each test writes a project (an app, its tests, its settings) and runs pytest on it, in this
process where that is sound (``run(..., in_process=True)``) or in a subprocess, under
pytest-asyncio or anyio, then reads the outcome and looks at the database from outside
(tests/run_databases.py). The projects' tables are named ``ptp_*``, apart from every other
test's.
"""

from __future__ import annotations

import importlib
import textwrap
from collections.abc import Iterator

import pytest

from .run_databases import drop_database, drop_tables, run_database

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


def settings_ini(*settings: str) -> str:
    """A pytest.ini of ``settings`` only (the project's pythonpath, pytest-asyncio's loop scope
    and warnings as errors aside), for a project that leaves out some of ``ini()``'s."""
    lines = [
        "[pytest]",
        *settings,
        "pythonpath = .",
        "asyncio_default_fixture_loop_scope = function",
        "filterwarnings = error",
    ]
    return "\n".join(lines) + "\n"


def write_project(
    pytester: pytest.Pytester,
    async_plugin: str,
    tests: str,
    *ini_lines: str,
    settings: str | None = None,
) -> None:
    """The app, ``tests`` as test_project.py (MARK replaced), pytest.ini and a conftest.

    The pytest.ini is ``ini(async_plugin, *ini_lines)``, or ``settings`` when given.
    """
    pytester.makepyfile(
        plugin_app=textwrap.dedent(APP),
        test_project=textwrap.dedent(tests).replace("MARK", MARK[async_plugin]),
    )
    pytester.makefile(".ini", pytest=settings or ini(async_plugin, *ini_lines))
    if async_plugin == "anyio":
        pytester.makeconftest(ANYIO_CONFTEST)


def run_plain_project(pytester: pytest.Pytester, url: str | None) -> pytest.RunResult:
    """Run, in process with ``url``, a project of one empty test that does not use dbscope."""
    pytester.makepyfile(test_nothing="def test_nothing():\n    pass\n")
    pytester.makefile(".ini", pytest=PLAIN_INI)
    return run(pytester, "pytest-asyncio", url, in_process=True)


# Plugins installed for other tests that no project uses: Hypothesis' and Schemathesis' cost
# each pytest process (pytest-xdist's workers too) about 1.3 s of CPU to load.
UNUSED_PLUGINS = ("-p", "no:hypothesispytest", "-p", "no:schemathesis")


def run(
    pytester: pytest.Pytester,
    async_plugin: str,
    url: str | None,
    *args: str,
    in_process: bool = False,
) -> pytest.RunResult:
    """Run pytest on the project, with ``url`` in DBSCOPE_TEST_URL.

    In a subprocess, as a user's run, unless ``in_process``: in this process, about 5 s
    quicker a run, and sound for any project whose tests leave the process alive (pytester
    gives the run a fresh Config and plugin manager, and re-imports the project's modules);
    pytest-xdist's workers are processes of their own either way. A project that ends its
    process (``os._exit``) needs the subprocess.
    """
    # An anyio project has no pytest-asyncio, as it would be in a project of its own.
    plugins = ("-p", "no:asyncio") if async_plugin == "anyio" else ()
    arguments = ("-p", "no:cacheprovider", *UNUSED_PLUGINS, *plugins, *args)
    with pytest.MonkeyPatch.context() as environment:
        if url is None:
            environment.delenv("DBSCOPE_TEST_URL", raising=False)
        else:
            environment.setenv("DBSCOPE_TEST_URL", url)
        if in_process:
            return pytester.runpytest_inprocess(*arguments)
        return pytester.runpytest_subprocess(*arguments, timeout=120)


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


def write_migrations(pytester: pytest.Pytester) -> None:
    """alembic.ini and one migration, which makes the table ptp_migrated."""
    pytester.makefile(".ini", alembic=ALEMBIC_INI)
    versions = pytester.mkdir("migrations") / "versions"
    versions.mkdir()
    (pytester.path / "migrations" / "env.py").write_text(ALEMBIC_ENV)
    (versions / "0001_migrated.py").write_text(ALEMBIC_VERSION)


def clean_project_database(database_url: str) -> Iterator[str]:
    """The database URL, with no ptp_* table and no run database left by an earlier run."""
    tables = ("ptp_children", "ptp_parents", "ptp_items", "ptp_migrated", "ptp_notes")
    drop_tables(database_url, *tables, "ptp_alembic_version", "ptp_other")
    drop_database(run_database(database_url))
    yield database_url
    drop_database(run_database(database_url))
