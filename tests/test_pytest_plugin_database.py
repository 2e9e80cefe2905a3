"""The pytest plugin's own database for the run: named after dbscope_url, made, dropped.

Each test writes a project (tests/plugin_projects.py), runs pytest on it, and looks at the
server from outside (tests/run_databases.py): the database the tests run in, what a run
does with what it finds under its name, the tables it makes there (from the metadata or by
Alembic migrations) and the ones it refuses to run on.
"""

from __future__ import annotations

import textwrap

import psycopg
import pytest
from sqlalchemy.engine import make_url

from .plugin_projects import (
    ISOLATION_TESTS,
    MARK,
    run,
    settings_ini,
    write_migrations,
    write_project,
)
from .run_databases import (
    ITEMS_WITH_A_ROW,
    create_database,
    database_exists,
    execute,
    rows,
    run_database,
    run_database_made_elsewhere,
    table_names,
)

# The tests of the app's tables in the run's database (which it refuses, uses or leaves) run on
# one PostgreSQL driver: what differs by driver is the connection that makes, finds and drops
# the database, which the tests of its life (own database, reuse, crash) take on both.
TABLE_BACKENDS = ["sqlite", "asyncpg", "asyncmy"]


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_tables_are_kept_with_the_keep_option(pytester: pytest.Pytester, project_url: str) -> None:
    """--dbscope-keep-tables leaves the run's database and its tables in place, empty."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", project_url, "--dbscope-keep-tables", in_process=True)

    result.assert_outcomes(passed=7)
    kept = run_database(project_url)
    assert table_names(kept) == {"ptp_items", "ptp_parents", "ptp_children"}
    assert rows(kept, "ptp_items") == []


OWN_DATABASE_TEST = """
import os

import pytest

pytestmark = MARK


async def test_the_engine_is_on_the_runs_own_database(dbscope_engine, dbscope_session):
    assert dbscope_engine.url.database == os.environ["PTP_RUN_DATABASE"]
"""

ENGINE_ALONE_TEST = """
import pytest
from sqlalchemy import text

pytestmark = MARK


async def test_the_apps_tables_are_there(dbscope_engine):
    async with dbscope_engine.connect() as connection:
        assert await connection.scalar(text("SELECT count(*) FROM ptp_items")) == 0
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


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_a_test_that_asks_for_the_engine_alone_finds_the_apps_tables(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """dbscope_engine alone, before any test took a session: the app's tables are made (they
    were made only with dbscope_connection, and such a test found none)."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    pytester.makepyfile(test_engine=ENGINE_ALONE_TEST.replace("MARK", MARK["pytest-asyncio"]))

    result = run(pytester, "pytest-asyncio", project_url, "-k", "apps_tables", in_process=True)

    result.assert_outcomes(passed=1)


def test_the_tests_run_in_a_database_of_their_own_and_the_named_one_keeps_its_rows(
    pytester: pytest.Pytester, project_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests run in the named database's name_test, which is gone when the run ends; the
    database dbscope_url names is never touched: its tables and rows outlive the run."""
    execute(project_url, *ITEMS_WITH_A_ROW)
    own = run_database(project_url)
    monkeypatch.setenv("PTP_RUN_DATABASE", make_url(own).database or "")
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    pytester.makepyfile(test_own=OWN_DATABASE_TEST.replace("MARK", MARK["pytest-asyncio"]))

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    result.assert_outcomes(passed=8)
    assert table_names(project_url) == {"ptp_items"}
    assert rows(project_url, "ptp_items") == [(1, "kept")]
    assert not database_exists(own)


def test_the_reuse_option_keeps_the_database_for_the_next_run(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """--dbscope-reuse-db keeps the run's database and its empty tables; the next run uses it."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    first = run(pytester, "pytest-asyncio", project_url, "--dbscope-reuse-db", in_process=True)
    second = run(pytester, "pytest-asyncio", project_url, "--dbscope-reuse-db", in_process=True)

    first.assert_outcomes(passed=7)
    second.assert_outcomes(passed=7)
    # Said after the progress line, not in it.
    first.stdout.fnmatch_lines(["*[[]100%[]]", "dbscope: kept the test database *"])
    second.stdout.fnmatch_lines(["dbscope: reusing the test database *kept by an earlier run*"])
    second.stdout.no_fnmatch_line("dbscope: made the test database*")  # the same tables
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

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    assert (crashed.ret, left) == (3, True)
    result.assert_outcomes(passed=7)
    result.stdout.fnmatch_lines(["dbscope: dropped the test database *left by an earlier run*"])
    assert not database_exists(run_database(project_url))


@pytest.mark.parametrize("db_backend", ["asyncpg"])
def test_a_left_database_that_a_session_uses_is_not_dropped(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """A name_test left behind but in use (another run's, say) stays; the error says why.

    The run before keeps its database (--dbscope-keep-tables), which leaves it marked as
    dbscope's, as a crashed run does (test_a_database_left_by_a_crashed_run_...)."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    kept = run(
        pytester,
        "pytest-asyncio",
        project_url,
        "-k",
        "test_one",
        "--dbscope-keep-tables",
        in_process=True,
    )
    kept.assert_outcomes(passed=1)
    own = make_url(run_database(project_url))
    other_session = own.set(drivername="postgresql").render_as_string(hide_password=False)

    with psycopg.connect(other_session):
        result = run(pytester, "pytest-asyncio", project_url, "-k", "test_one", in_process=True)

    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(
        [f"*the test database '{own.database}'*other users*if another test run uses it*"]
    )
    assert database_exists(run_database(project_url))


@pytest.mark.parametrize("db_backend", TABLE_BACKENDS)
def test_tables_it_did_not_make_are_refused_naming_them_and_the_option(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """The app's tables in a name_test someone else made stop the run; they and it stay.

    On asyncpg of the two PostgreSQL drivers: the same code path (TABLE_BACKENDS).
    """
    own = run_database_made_elsewhere(project_url)
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    result.assert_outcomes(errors=7)
    name = make_url(own).database
    result.stdout.fnmatch_lines(
        [f"*the test database '{name}'* the app's tables ptp_items,*--dbscope-use-existing-tables*"]
    )
    assert rows(own, "ptp_items") == [(1, "kept")]


@pytest.mark.parametrize("db_backend", TABLE_BACKENDS)
def test_the_existing_tables_option_runs_on_them_and_drops_only_its_own(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """--dbscope-use-existing-tables runs on them; only the tables the run made are dropped.

    On asyncpg of the two PostgreSQL drivers: the same code path (TABLE_BACKENDS).
    """
    own = run_database_made_elsewhere(project_url)
    write_project(pytester, "pytest-asyncio", EXISTING_ROW_TEST)

    result = run(
        pytester, "pytest-asyncio", project_url, "--dbscope-use-existing-tables", in_process=True
    )

    result.assert_outcomes(passed=1)
    assert table_names(own) == {"ptp_items"}
    assert rows(own, "ptp_items") == [(1, "kept")]


@pytest.mark.parametrize("db_backend", ["asyncpg", "asyncmy"])
def test_a_test_database_made_by_hand_serves_run_after_run(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """Without the right to create databases, name_test made once by hand: plain runs, and
    runs with --dbscope-reuse-db alone (which cannot keep tables the next run would know as
    dbscope's, and says so), make and drop their tables in it each time; with
    --dbscope-use-existing-tables too they keep them; the tables kept stop a run without
    that option, which says it cannot tell them from anyone else's."""
    own = run_database(project_url)
    create_database(own)
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    keeping = ("--dbscope-reuse-db", "--dbscope-use-existing-tables")

    plain = [run(pytester, "pytest-asyncio", project_url, in_process=True) for _ in range(2)]
    reused = [
        run(pytester, "pytest-asyncio", project_url, "--dbscope-reuse-db", in_process=True)
        for _ in range(2)
    ]
    left = table_names(own)
    kept = [run(pytester, "pytest-asyncio", project_url, *keeping, in_process=True) for _ in "ab"]
    reuse_alone = run(
        pytester, "pytest-asyncio", project_url, "--dbscope-reuse-db", in_process=True
    )

    for result in (*plain, *reused, *kept):
        result.assert_outcomes(passed=7)
    reused[0].stdout.fnmatch_lines(
        [
            "dbscope: dropped the tables ptp_children, ptp_items, ptp_parents all the same*"
            "add --dbscope-use-existing-tables*"
        ]
    )
    assert left == set()
    assert table_names(own) == {"ptp_items", "ptp_parents", "ptp_children"}
    reuse_alone.assert_outcomes(errors=7)
    reuse_alone.stdout.fnmatch_lines(["*cannot tell them from anyone else's*"])
    reuse_alone.stdout.no_fnmatch_line("*which dbscope did not make;*")


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_without_tables_to_make_the_tests_run_in_the_named_database(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """No dbscope_metadata nor Alembic: no database is made, the named one is used as it is."""
    execute(project_url, *ITEMS_WITH_A_ROW)
    settings = settings_ini("dbscope_database = plugin_app:db")
    write_project(pytester, "pytest-asyncio", EXISTING_ROW_TEST, settings=settings)

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

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


GIVEN_RUN_URL_CONFTEST = """
import os

import pytest


@pytest.fixture(scope="session")
def dbscope_run_url():
    return os.environ["PTP_GIVEN_URL"]
"""


@pytest.mark.parametrize("db_backend", TABLE_BACKENDS)
def test_a_database_given_by_conftest_gets_the_tables_and_keeps_the_rest(
    pytester: pytest.Pytester, project_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An overridden dbscope_run_url is used as someone else's: only the run's tables go.

    On asyncpg of the two PostgreSQL drivers: the same code path (TABLE_BACKENDS).
    """
    given = run_database(project_url)
    create_database(given)
    execute(given, "CREATE TABLE ptp_other (id INTEGER PRIMARY KEY)")
    monkeypatch.setenv("PTP_GIVEN_URL", given)
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    pytester.makeconftest(GIVEN_RUN_URL_CONFTEST)

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    result.assert_outcomes(passed=7)
    assert database_exists(given)
    assert table_names(given) == {"ptp_other"}


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
    settings = settings_ini("dbscope_metadata = schema_models:metadata")
    write_project(pytester, "pytest-asyncio", SCHEMA_TEST, settings=settings)
    pytester.makepyfile(schema_models=textwrap.dedent(SCHEMA_MODELS))

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    result.assert_outcomes(passed=1)


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
    settings = settings_ini("dbscope_alembic_config = alembic.ini")
    write_project(pytester, "pytest-asyncio", MIGRATED_TEST, settings=settings)
    write_migrations(pytester)

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    result.assert_outcomes(passed=2)
    assert table_names(project_url) == set()
    assert not database_exists(run_database(project_url))
