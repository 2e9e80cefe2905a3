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
    """Keep ``message`` for the end of the run, where :func:`show_lines` writes it.

    Not at once: fixtures speak in the middle of the progress line, and a run's database is
    dropped or kept after its last dot and before its ``[100%]``. A pytest-xdist worker has
    no terminal: it hands the line to its controller (``keep_worker_lines``).
    """
    workeroutput = getattr(config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput.setdefault(WORKER_LINES, []).append(message)
    else:
        config.stash.setdefault(_KEPT_LINES, []).append(message)


def keep_worker_lines(node: Any) -> None:
    """In the controller of a pytest-xdist run: keep what a finished worker said."""
    lines = getattr(node, "workeroutput", {}).get(WORKER_LINES, ())
    node.config.stash.setdefault(_KEPT_LINES, []).extend(lines)


def show_lines(config: pytest.Config) -> None:
    """Write, once the tests have run, what the plugin (or the workers of a pytest-xdist
    run) said, a line each."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    for line in config.stash.get(_KEPT_LINES, []):
        reporter.write_line(f"dbscope: {line}")
