"""Query counts in pytest: the ``dbscope_queries`` fixture, and the marker of the same name
that gives a whole test a budget of statements (docs/testing.md, "Counting queries").

Both count what :func:`dbscope.testing.count_queries` counts, on the test's connection: the
test's own sessions, the app's requests through ``dbscope_client``, ``db.transaction()``.
The marker counts the test's body only, not its fixtures' set-up (the rows a fixture adds),
and fails the test, not its teardown, with the message of
:meth:`dbscope.testing.QueryLog.check`.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

import pytest
from sqlalchemy.ext.asyncio import AsyncConnection

from dbscope import ConfigurationError, Database, testing

MARKER: Final = "dbscope_queries"
MARKER_HELP: Final = (
    f"{MARKER}(exactly=None, at_most=None, everything=False): fail the test unless its body "
    "runs exactly (or at most) that many statements; the test uses dbscope_client, "
    "dbscope_session or dbscope_connection (docs/testing.md)."
)
BOUNDS: Final = frozenset({"exactly", "at_most", "everything"})


@pytest.fixture
def dbscope_queries(
    dbscope_database: Database, dbscope_connection: AsyncConnection
) -> testing.QueryCounter:
    """Counts the statements of the test's transaction: ``async with dbscope_queries(at_most=2):``
    fails at the end of the block if it ran more; ``async with dbscope_queries() as log:``
    counts only."""
    return testing.QueryCounter(dbscope_database)


def register_marker(config: pytest.Config) -> None:
    """Declare the marker, so that ``--strict-markers`` accepts it."""
    config.addinivalue_line("markers", MARKER_HELP)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Count the statements of a test marked ``dbscope_queries``; fail it if over budget."""
    marker = item.get_closest_marker(MARKER)
    if marker is None:
        return (yield)
    counting = _budget(item, marker)
    ran = False
    try:
        with counting:
            result = yield
            ran = True
    except testing.QueryCountError as error:
        if not ran:
            raise  # the test's own count failed, with its own traceback
        over_budget = str(error)
    else:
        return result
    # Out of the except block, so that the failure is not shown as raised while handling it.
    pytest.fail(f"@pytest.mark.{MARKER}: the test {over_budget}", pytrace=False)


def _budget(item: pytest.Item, marker: pytest.Mark) -> testing.Counting:
    """The counted block the marker asks for, on the test's Database; the test fails now if
    the marker or the test's fixtures do not allow it."""
    unknown = sorted(set(marker.kwargs) - BOUNDS)
    if marker.args or unknown:
        given = ", ".join([*map(repr, marker.args), *(f"{name}=..." for name in unknown)])
        pytest.fail(
            f"@pytest.mark.{MARKER}({given}): it takes exactly=, at_most= and everything= "
            f"only, by name; e.g. @pytest.mark.{MARKER}(at_most=3).",
            pytrace=False,
        )
    funcargs = getattr(item, "funcargs", {})
    db = funcargs.get("dbscope_database")
    if "dbscope_connection" not in funcargs or not isinstance(db, Database):
        pytest.fail(
            f"@pytest.mark.{MARKER} counts the statements of the test's transaction, and "
            f"{item.name} has none: use dbscope_client, dbscope_session or dbscope_connection "
            "in it.",
            pytrace=False,
        )
    try:
        return testing.assert_queries(db, **marker.kwargs)
    except ConfigurationError as error:
        pytest.fail(f"@pytest.mark.{MARKER}: {error}", pytrace=False)
