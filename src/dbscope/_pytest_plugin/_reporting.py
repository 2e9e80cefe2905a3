"""How the plugin speaks: failures without a traceback that say what to change, and notes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, Final, NoReturn, TypeVar

import pytest

from dbscope import DbscopeError

T = TypeVar("T")
# In a pytest-xdist worker's output to its controller: the lines the worker said.
WORKER_LINES: Final = "dbscope_lines"
_KEPT_LINES = pytest.StashKey[list[str]]()


def fail(message: str) -> NoReturn:
    """Fail the test (or the fixture) with ``message`` alone."""
    pytest.fail(message, pytrace=False)


@contextlib.contextmanager
def explained(doing: str) -> Iterator[None]:
    """Report dbscope's own errors (bad URL, server down, refusals) without a traceback."""
    try:
        yield
    except DbscopeError as error:
        # `from None`: the message says it all; the chained tracebacks would bury it.
        raise pytest.fail.Exception(f"dbscope, {doing}: {error}", pytrace=False) from None


def phased(
    manager: contextlib.AbstractContextManager[T], entering: str, leaving: str
) -> Iterator[T]:
    """Enter ``manager``, yield what it gives, exit it: its errors explained as each phase's."""
    with contextlib.ExitStack() as stack:
        with explained(entering):
            value = stack.enter_context(manager)
        yield value
        with explained(leaving):
            stack.close()


def require_asyncio() -> None:
    """Fail unless an asyncio loop runs: SQLAlchemy's async engines need one."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        fail(
            "dbscope's fixtures need asyncio (SQLAlchemy's async engines run on asyncio "
            "only); with anyio, define an anyio_backend fixture that returns 'asyncio'."
        )


def say(config: pytest.Config, message: str) -> None:
    """Write ``message`` on a line of its own in the terminal, between the progress dots.

    A pytest-xdist worker has no terminal: it hands the line to its controller, which shows
    it after the tests (``show_worker_lines``).
    """
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput.setdefault(WORKER_LINES, []).append(message)
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    capture = config.pluginmanager.get_plugin("capturemanager")
    # Fixtures run while pytest captures the output, which it shows only for failed tests.
    suspended = capture.global_and_fixture_disabled() if capture else contextlib.nullcontext()
    with suspended:
        reporter.ensure_newline()
        reporter.write_line(f"dbscope: {message}")


def keep_worker_lines(node: Any) -> None:
    """In the controller of a pytest-xdist run: keep what a finished worker said."""
    lines = getattr(node, "workeroutput", {}).get(WORKER_LINES, ())
    node.config.stash.setdefault(_KEPT_LINES, []).extend(lines)


def show_worker_lines(config: pytest.Config) -> None:
    """Say, once the tests have run, what the workers of a pytest-xdist run said."""
    # Not as each worker finishes: the progress line is still being written then.
    for line in config.stash.get(_KEPT_LINES, []):
        say(config, line)
