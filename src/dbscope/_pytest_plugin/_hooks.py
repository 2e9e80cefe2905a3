"""The plugin's hooks: start-up, the header line, the loop check before each test, and
the lines of pytest-xdist's workers."""

from __future__ import annotations

from typing import Any

import pytest

from dbscope import ConfigurationError, Database
from dbscope._pytest_plugin import _async_fixtures, _callbacks, _loops
from dbscope._pytest_plugin._fixtures import MaskedUrl
from dbscope._pytest_plugin._options import FLAGS, flag, url_setting
from dbscope._pytest_plugin._queries import register_marker
from dbscope._pytest_plugin._reporting import keep_worker_lines, show_lines
from dbscope._urls import parse_url


def pytest_configure(config: pytest.Config) -> None:
    """Build the async fixtures for the plugin and the loop scope the tests run in."""
    setup = _loops.choose(config)
    config.stash[_loops.SETUP] = setup
    config.pluginmanager.register(_async_fixtures.build(setup), "dbscope-async-fixtures")
    register_marker(config)
    _callbacks.register_marker(config)
    _shown_url(config)  # here, not in the header, which -q and --no-header leave out
    for name, _ in FLAGS:  # a wrong one stops the run here, not each test in its fixtures
        flag(config, name)


def pytest_report_header(config: pytest.Config) -> str | None:
    """One line naming the database the settings give, its password masked."""
    setup = config.stash.get(_loops.SETUP, None)
    shown = _shown_url(config)
    if setup is None or shown is None:
        return None
    return f"dbscope: {shown} ({setup.async_plugin}, loop scope {setup.loop_scope})"


def _shown_url(config: pytest.Config) -> str | None:
    """The URL the settings give, as dbscope resolves it (``Database(url).url``, whose repr
    masks the password wherever the URL gave it), never by editing the text the user wrote;
    None if none is given.

    Raises:
        pytest.UsageError: dbscope refuses the URL: the run ends before any test, naming the
            setting that gave it, as the plugin's other settings do.
    """
    url, setting = url_setting(config)
    if not url:
        return None
    try:
        return repr(Database(url).url)
    except ConfigurationError as error:
        # dbscope's messages never repeat a password, so the reason can be shown as is;
        # `from None`: the chained errors would be printed under the message.
        message = f"{setting} names a database URL dbscope refuses; fix {setting}. {error}"
        raise pytest.UsageError(message) from None


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


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """A failed comparison with a database URL that has a password (dbscope's fixtures, or
    a string made of one), both sides without their passwords: pytest's own explanation
    diffs the strings themselves, password and all."""
    if not _has_password(left) and not _has_password(right):
        return None
    return [
        f"{_masked(left)} {op} {_masked(right)}",
        "(dbscope shows database URLs without their passwords, so gives no diff of them)",
    ]


def _has_password(value: object) -> bool:
    if isinstance(value, MaskedUrl):
        return True
    if not isinstance(value, str) or "://" not in value:
        return False
    try:
        return parse_url(value).password is not None
    except ValueError:  # no URL (text holding one, say): pytest's own explanation
        return False


def _masked(value: object) -> str:
    """A URL without its password; the test's other values (not URLs) as they are."""
    if isinstance(value, MaskedUrl) or (isinstance(value, str) and "://" in value):
        return repr(MaskedUrl(value))
    return repr(value)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """pytest-xdist's controller: keep what a finished worker said of its database."""
    keep_worker_lines(node)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say what the run (or pytest-xdist's workers) did with the test databases."""
    show_lines(config)
