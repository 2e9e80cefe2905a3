"""The pytest plugin through PgBouncer: each test's transaction, rolled back, in both modes.

A project (tests/plugin_projects.py) whose app's Database says ``pgbouncer=...`` runs with
its test URL on a PgBouncer: the plugin makes the run's database, its tables and each test's
connection through it with the app's preset, and every test sees only its own rows. With a
loop shared by the whole run, the tests share one pooled connection, which PgBouncer serves
from another server connection in each test's transaction.
"""

import textwrap
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_URL
from tests.pgbouncer_service import Bouncers, Mode
from tests.plugin_projects import APP, ISOLATION_TESTS, clean_project_database, run, write_project
from tests.run_databases import database_exists, run_database, table_names

DIRECT = make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg").render_as_string(False)
DATABASE_LINE = 'db = Database("postgresql+asyncpg://nobody@127.0.0.1:9/production")'


@pytest.fixture
def project_database() -> Iterator[str]:
    """The test database, seen directly: no ptp_* table and no run database, before and
    after."""
    yield from clean_project_database(DIRECT)


@pytest.mark.parametrize(
    ("driver", "mode", "loop"),
    [
        ("asyncpg", "transaction", "session"),
        ("psycopg", "transaction", "function"),
        ("asyncpg", "transaction-prepared", "function"),
        ("psycopg", "transaction-prepared", "session"),
    ],
)
def test_each_test_runs_in_its_own_rolled_back_transaction_through_pgbouncer(
    pytester: pytest.Pytester,
    pgbouncer: Bouncers,
    project_database: str,
    driver: str,
    mode: Mode,
    loop: str,
) -> None:
    """Identical tests see only their own rows; the app's commits and rollbacks are
    savepoints; the run's database is made and dropped through PgBouncer."""
    assert DATABASE_LINE in APP
    write_project(pytester, "anyio", ISOLATION_TESTS, f"dbscope_loop_scope = {loop}")
    app = APP.replace(DATABASE_LINE, DATABASE_LINE.replace(")", f", pgbouncer={mode!r})"))
    pytester.makepyfile(plugin_app=textwrap.dedent(app))

    result = run(pytester, "anyio", pgbouncer.url(mode, driver, POSTGRES_URL), in_process=True)

    result.assert_outcomes(passed=7)
    assert table_names(project_database) == set()
    assert not database_exists(run_database(project_database))
