"""--dbscope-reuse-db across a change of the app's models: the kept database is made anew.

Each test runs pytest twice on a project (tests/plugin_projects.py) with the option, the
app's models changed in between as a developer changes them, and looks at what the second
run's tests saw and what it said. The tables are the metadata's (create_all); the
migrations' path (dbscope_alembic_config) upgrades a kept database to head instead.
"""

from __future__ import annotations

import textwrap

import pytest

from .plugin_projects import APP, ISOLATION_TESTS, run, write_project
from .run_databases import column_types, run_database

REUSE = "--dbscope-reuse-db"
TABLE_BACKENDS = ["sqlite", "asyncpg", "asyncmy"]
ITEM_NAME = "name: Mapped[str] = mapped_column(String(50))"


def changed_app(pytester: pytest.Pytester, *item_lines: str) -> None:
    """The project's app with ``item_lines`` in place of Item's name column."""
    app = APP.replace(ITEM_NAME, "\n    ".join(item_lines))
    assert app != APP
    pytester.makepyfile(plugin_app=textwrap.dedent(app))


def two_runs(
    pytester: pytest.Pytester, url: str, second_tests: str, *item_lines: str
) -> pytest.RunResult:
    """A run with the option on the project's app, then one on the app changed (its tests
    ``second_tests``): the second's result."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS)
    first = run(pytester, "pytest-asyncio", url, REUSE, "-k", "test_one", in_process=True)
    first.assert_outcomes(passed=1)
    write_project(pytester, "pytest-asyncio", second_tests)
    changed_app(pytester, *item_lines)
    return run(pytester, "pytest-asyncio", url, REUSE, in_process=True)


PRICE_TEST = """
import pytest
from sqlalchemy import select

from plugin_app import Item

pytestmark = MARK


async def test_the_new_column_takes_a_value(dbscope_session):
    dbscope_session.add(Item(name="tea", price=3))
    await dbscope_session.commit()
    assert list(await dbscope_session.scalars(select(Item.price))) == [3]
"""


@pytest.mark.parametrize("db_backend", TABLE_BACKENDS)
def test_a_column_added_between_reusing_runs_is_there_in_the_second(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """A column added to a model: the kept database is made anew, and the run names the
    table; the test that uses the column passes (it failed with the driver's "no such
    column" on the kept table)."""
    result = two_runs(
        pytester,
        project_url,
        PRICE_TEST,
        "name: Mapped[str] = mapped_column(String(50))",
        "price: Mapped[int] = mapped_column(default=0)",
    )

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["dbscope: made the test database * anew*no longer match*ptp_items*price*"]
    )
    result.stdout.no_fnmatch_line("*reusing the test database*")


DUPLICATE_TEST = """
import pytest
from sqlalchemy.exc import IntegrityError

from plugin_app import Item

pytestmark = MARK


async def test_a_duplicate_name_is_refused(dbscope_session):
    dbscope_session.add_all([Item(name="tea"), Item(name="tea")])
    with pytest.raises(IntegrityError):
        await dbscope_session.flush()
"""


@pytest.mark.parametrize("db_backend", TABLE_BACKENDS)
def test_a_unique_constraint_added_between_reusing_runs_refuses_a_duplicate(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """A unique constraint added to a column: the test that expects a duplicate refused
    passes (on the kept table, which had none, the duplicate went in and it failed)."""
    result = two_runs(
        pytester,
        project_url,
        DUPLICATE_TEST,
        "name: Mapped[str] = mapped_column(String(50), unique=True)",
    )

    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["dbscope: made the test database * anew*ptp_items*"])


@pytest.mark.parametrize("db_backend", TABLE_BACKENDS)
def test_an_index_or_a_type_changed_between_reusing_runs_is_made_anew(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """An index added, a length changed: no test would see either, but the kept table is
    made anew with them."""
    result = two_runs(
        pytester,
        project_url,
        ISOLATION_TESTS,
        "name: Mapped[str] = mapped_column(String(80), index=True)",
    )

    result.assert_outcomes(passed=7)
    assert column_types(run_database(project_url), "ptp_items")["name"] == "VARCHAR(80)"
