"""An ``on_commit`` callback that raises fails the test it ran in (docs/testing.md, "Callbacks
that raise"), unless the test is marked ``dbscope_allow_on_commit_errors``.

In production such a callback is logged and the commit stands; in a test that passed it
would go unseen. Every test that uses one of the plugin's fixtures runs (set-up, call and
tear-down) inside :func:`dbscope.testing.failed_callbacks`, which hears of the callbacks of
every unit of work in the process, a request's, a ``db.transaction()`` block's, a unit's in
another task. Those that raised by the end of the call fail the test; those of its tear-down
(``dbscope_session``'s, run at its end) fail the tear-down. A test that failed already keeps
its own failure, and has them in a section of its report.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Final

import pytest

from dbscope import testing

MARKER: Final = "dbscope_allow_on_commit_errors"
MARKER_HELP: Final = (
    f"{MARKER}: let the test's on_commit callbacks raise: they are only logged, as in "
    "production (pytest's caplog has them), instead of failing the test (docs/testing.md)."
)
SECTION: Final = "dbscope: on_commit callbacks that raised"
_WATCHED = pytest.StashKey[testing.FailedCallbacks]()


def register_marker(config: pytest.Config) -> None:
    """Declare the marker, so that ``--strict-markers`` accepts it."""
    config.addinivalue_line("markers", MARKER_HELP)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    """Watch the callbacks of a test that uses the plugin, from its set-up to its tear-down."""
    fixtures = getattr(item, "fixturenames", ())
    if item.get_closest_marker(MARKER) or not any(n.startswith("dbscope_") for n in fixtures):
        return (yield)
    with testing.failed_callbacks() as failed:
        item.stash[_WATCHED] = failed
        try:
            return (yield)
        finally:
            del item.stash[_WATCHED]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Fail the call (or the tear-down) of a test whose callbacks raised meanwhile."""
    report = yield
    failed = item.stash.get(_WATCHED, None)
    if failed is None or (call.when == "setup" and report.passed):
        return report  # a fixture's are the test's: its call reports them
    try:
        failed.check()
    except testing.OnCommitError as error:
        message = (
            f"{error}\n\nIf the test expects it, mark it @pytest.mark.{MARKER}: the error is "
            "then only logged, as in production, and caplog has it."
        )
        if report.passed:
            report.outcome = "failed"
            report.longrepr = message
        else:  # the test's own failure (or skip) stays what the report says
            report.sections.append((SECTION, message))
    return report
