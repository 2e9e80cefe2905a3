"""The pytest plugin under pytest-xdist: a database of its own for each worker.

Each test writes a project (tests/plugin_projects.py) whose tests write rows and count them,
runs it with ``-n 2`` or ``-n 4`` (pytest-xdist; the controller in this process, the workers
in their own), and looks at the server from outside (tests/run_databases.py): each worker
ran in ``name_test_gw<N>``, made and set up once by that worker and dropped at its end; the
controller made none; no worker saw another's rows.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from dbscope import ConfigurationError, testing

from .plugin_projects import (
    MARK,
    run,
    settings_ini,
    write_migrations,
    write_project,
)
from .run_databases import database_exists, drop_database, run_database, table_names

WORKERS = ("gw0", "gw1", "gw2", "gw3")

# Each test learns its worker from pytest-xdist's PYTEST_XDIST_WORKER.
REQUEST_TESTS = """
import os

import pytest
from sqlalchemy import func, select

import plugin_app
from plugin_app import Item

pytestmark = MARK
WORKER = os.environ["PYTEST_XDIST_WORKER"]


@pytest.mark.parametrize("n", range(8))
async def test_a_request_writes_a_row_only_this_test_sees(
    dbscope_client, dbscope_session, dbscope_engine, n
):
    database = dbscope_engine.url.database.removesuffix(".db")
    assert database.endswith(f"_test_{WORKER}")
    assert (await dbscope_client.post(f"/items/{WORKER}-{n}")).json() == 1
    assert list(await dbscope_session.scalars(select(Item.name))) == [f"{WORKER}-{n}"]
    assert plugin_app.CREATE_ALL_RUNS == [1]


@pytest.mark.parametrize("n", range(4))
async def test_the_tests_own_rows_are_gone_after_it(dbscope_session, n):
    assert await dbscope_session.scalar(select(func.count()).select_from(Item)) == 0
"""

# Rows written for real, outside the test's transaction, in the worker's database: in a
# database the workers shared, another worker's would show up.
COMMITTED_TESTS = """
import os

import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import create_async_engine

from plugin_app import Parent

pytestmark = MARK
NUMBER = int(os.environ["PYTEST_XDIST_WORKER"].removeprefix("gw"))


@pytest.mark.parametrize("n", range(4))
async def test_rows_committed_in_the_workers_database_are_its_own(
    dbscope_run_url, dbscope_tables, n
):
    engine = create_async_engine(dbscope_run_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(insert(Parent).values(id=1000 * NUMBER + n + 1))
        async with engine.connect() as connection:
            ids = list(await connection.scalars(select(Parent.id)))
    finally:
        await engine.dispose()
    assert {parent_id // 1000 for parent_id in ids} == {NUMBER}
"""


def write_worker_project(pytester: pytest.Pytester, async_plugin: str) -> None:
    """The project of REQUEST_TESTS and COMMITTED_TESTS: 16 tests."""
    write_project(pytester, async_plugin, REQUEST_TESTS)
    pytester.makepyfile(test_committed=COMMITTED_TESTS.replace("MARK", MARK[async_plugin]))


def worker_database(url: str, worker: str) -> str:
    """The URL of the database a worker runs the tests in: ``url``'s name, ``_test_<worker>``."""
    own = make_url(run_database(url))
    name = own.database or ""
    if own.get_backend_name() == "sqlite":
        path = Path(name)
        name = str(path.with_name(f"{path.stem}_{worker}{path.suffix}"))
    else:
        name += f"_{worker}"
    return own.set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def xdist_url(project_url: str) -> Iterator[str]:
    """The project's database URL, with no worker's database left by an earlier run."""
    for worker in WORKERS:
        drop_database(worker_database(project_url, worker))
    yield project_url
    for worker in WORKERS:
        drop_database(worker_database(project_url, worker))


def existing_databases(url: str) -> list[str]:
    """Which of the run's databases exist: ``-`` for the one without workers, and each
    worker's id."""
    found = ["-"] if database_exists(run_database(url)) else []
    return found + [worker for worker in WORKERS if database_exists(worker_database(url, worker))]


# Two workers make their databases on each server; four at once on PostgreSQL. SQLite's run
# is under anyio, the others under pytest-asyncio (SQLite's, under pytest-asyncio too, is the
# migrations test's).
WORKER_RUNS = [
    ("sqlite", "anyio", "2"),
    ("asyncpg", "pytest-asyncio", "4"),
    ("psycopg", "pytest-asyncio", "2"),
    ("asyncmy", "pytest-asyncio", "2"),
]


@pytest.mark.parametrize(("db_backend", "async_plugin", "workers"), WORKER_RUNS)
def test_each_worker_runs_in_a_database_of_its_own_dropped_at_its_end(
    pytester: pytest.Pytester, xdist_url: str, async_plugin: str, workers: str
) -> None:
    """-n 2 or 4, under pytest-asyncio or anyio: every test passes in its worker's database,
    made and dropped by that worker, and none is left after the run."""
    write_worker_project(pytester, async_plugin)

    result = run(pytester, async_plugin, xdist_url, "-n", workers, in_process=True)

    result.assert_outcomes(passed=16)
    assert existing_databases(xdist_url) == []
    assert table_names(xdist_url) == set()


@pytest.mark.parametrize("db_backend", ["asyncpg"])
def test_the_reuse_option_keeps_each_workers_database_for_the_next_run(
    pytester: pytest.Pytester, xdist_url: str
) -> None:
    """--dbscope-reuse-db with -n 2: two databases kept, then reused, each run saying so.

    On PostgreSQL only: what a worker adds to a run's reuse is the name of its database and
    its lines, the same code on every server; how each server's database is kept and found
    again is test_the_reuse_option_keeps_the_database_for_the_next_run's, on every database.
    """
    write_project(pytester, "pytest-asyncio", REQUEST_TESTS)

    first = run(
        pytester, "pytest-asyncio", xdist_url, "-n", "2", "--dbscope-reuse-db", in_process=True
    )
    kept = existing_databases(xdist_url)
    second = run(
        pytester, "pytest-asyncio", xdist_url, "-n", "2", "--dbscope-reuse-db", in_process=True
    )

    first.assert_outcomes(passed=12)
    second.assert_outcomes(passed=12)
    assert kept == ["gw0", "gw1"]
    assert existing_databases(xdist_url) == ["gw0", "gw1"]
    second.stdout.fnmatch_lines_random(
        [
            "dbscope: reusing the test database *_test_gw0* kept by an earlier run*",
            "dbscope: reusing the test database *_test_gw1* kept by an earlier run*",
            "dbscope: kept the test database *_test_gw0* (--dbscope-reuse-db)",
        ]
    )
    assert table_names(worker_database(xdist_url, "gw1")) == {
        "ptp_items",
        "ptp_parents",
        "ptp_children",
    }


ONE_TEST = """
import pytest

pytestmark = MARK


async def test_the_only_one(dbscope_session):
    pass
"""


@pytest.mark.parametrize("db_backend", ["asyncpg"])
def test_neither_the_controller_nor_an_idle_worker_makes_a_database(
    pytester: pytest.Pytester, xdist_url: str
) -> None:
    """-n 2 with one test: one database, the busy worker's; none without a worker id."""
    write_project(pytester, "pytest-asyncio", ONE_TEST)

    result = run(
        pytester, "pytest-asyncio", xdist_url, "-n", "2", "--dbscope-reuse-db", in_process=True
    )

    result.assert_outcomes(passed=1)
    made = existing_databases(xdist_url)
    assert len(made) == 1
    assert made[0] in WORKERS


MIGRATED_TESTS = """
import pytest
from sqlalchemy import text

pytestmark = MARK


@pytest.mark.parametrize("n", range(6))
async def test_the_migrated_table_is_there_and_empty(dbscope_session, n):
    assert (await dbscope_session.scalar(text("SELECT count(*) FROM ptp_migrated"))) == 0
    await dbscope_session.execute(text(f"INSERT INTO ptp_migrated (id) VALUES ({n})"))
    await dbscope_session.commit()
    versions = await dbscope_session.scalar(text("SELECT count(*) FROM ptp_alembic_version"))
    assert versions == 1
"""


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_migrations_make_the_tables_in_each_workers_database(
    pytester: pytest.Pytester, xdist_url: str
) -> None:
    """dbscope_alembic_config with -n 2: each worker upgrades its own database to head.

    On SQLite: a worker migrates the database it made as a run without workers does
    (test_alembic_migrations_make_the_tables_in_the_runs_database, on SQLite and PostgreSQL),
    the same code on every server; the workers' databases on PostgreSQL are the other tests'.
    """
    settings = settings_ini("dbscope_alembic_config = alembic.ini")
    write_project(pytester, "pytest-asyncio", MIGRATED_TESTS, settings=settings)
    write_migrations(pytester)

    result = run(pytester, "pytest-asyncio", xdist_url, "-n", "2", in_process=True)

    result.assert_outcomes(passed=6)
    assert existing_databases(xdist_url) == []
    assert table_names(xdist_url) == set()


def test_own_database_names_a_workers_database_after_the_worker(sqlite_url: str) -> None:
    """testing.own_database(worker="gw3") makes name_test_gw3, and drops it at the end."""
    with testing.own_database(sqlite_url, worker="gw3") as url:
        made = database_exists(url)

    assert made
    assert url == worker_database(sqlite_url, "gw3")
    assert not database_exists(url)


@pytest.mark.parametrize("worker", ["gw0; DROP DATABASE x", "", "gw-0", "g" * 33])
def test_a_worker_id_that_cannot_be_in_a_database_name_is_refused(
    sqlite_url: str, worker: str
) -> None:
    """A worker id with other characters than letters, digits and '_' is a ConfigurationError."""
    own = testing.own_database(sqlite_url, worker=worker)

    with pytest.raises(ConfigurationError, match=re.escape(f"worker={worker!r} cannot be")):
        own.__enter__()
