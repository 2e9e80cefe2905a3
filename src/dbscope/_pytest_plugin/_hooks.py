"""The plugin's hooks: start-up, the header line, and the loop check before each test."""

from __future__ import annotations

import pytest

from dbscope import Database, DbscopeError
from dbscope._pytest_plugin import _async_fixtures, _loops
from dbscope._pytest_plugin._options import configured_url
from dbscope._pytest_plugin._queries import register_marker


def pytest_configure(config: pytest.Config) -> None:
    """Build the async fixtures for the plugin and the loop scope the tests run in."""
    setup = _loops.choose(config)
    config.stash[_loops.SETUP] = setup
    config.pluginmanager.register(_async_fixtures.build(setup), "dbscope-async-fixtures")
    register_marker(config)


def pytest_report_header(config: pytest.Config) -> str | None:
    """One line naming the database the settings give, its password masked.

    The URL is shown as dbscope resolves it (``Database(url).url``, whose repr masks the
    password wherever the URL gave it), never by editing the text the user wrote.
    """
    setup = config.stash.get(_loops.SETUP, None)
    url = configured_url(config)
    if setup is None or not url:
        return None
    try:
        shown = repr(Database(url).url)
    except DbscopeError as error:
        # dbscope's messages never repeat a password, so the reason can be shown as is.
        shown = f"(a URL dbscope refuses: {error})"
    return f"dbscope: {shown} ({setup.async_plugin}, loop scope {setup.loop_scope})"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test whose async dbscope fixtures would run in another loop than the test."""
    setup = item.config.stash.get(_loops.SETUP, None)
    if setup is None or not isinstance(item, pytest.Function):
        return
    used = [name for name in setup.async_fixtures if name in item.fixturenames]
    if used:
        problem = _loops.loop_problem(item, setup, ", ".join(used))
        if problem is not None:
            pytest.fail(problem, pytrace=False)
