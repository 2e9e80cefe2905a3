"""The ``on_commit`` callbacks that raised while a block ran, for a test to fail on.

After a commit, a callback that raises is logged and the write stands (docs/units-of-work.md),
so a test that runs it passes unless it reads the log. :func:`failed_callbacks` collects
them, in every task, event loop and thread of the process while the block runs, and
:meth:`FailedCallbacks.check` fails with each one's name and traceback; the pytest plugin
does so for each test. They are still logged, as in production.
"""

from __future__ import annotations

import contextlib
import functools
import reprlib
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, overload

from dbscope import _commit_hooks
from dbscope._commit_hooks import watch_failures
from dbscope.testing._shapes import shown_path

# The frames of dbscope's own that call the callback: left out of the tracebacks shown.
_CALLER: Final = Path(_commit_hooks.__file__).resolve()


@dataclass(frozen=True, slots=True)
class FailedCallback:
    """An ``on_commit`` callback that raised after its unit of work committed.

    Attributes:
        callback: the function given to ``on_commit()``.
        error: what it raised, with its traceback.
    """

    callback: Callable[[], Any]
    error: Exception

    @property
    def name(self) -> str:
        """The callback as its code names it: ``module.function`` (a lambda or a nested
        function with ``path:line``), ``functools.partial(module.function, ...)``; else its
        ``repr``."""
        return _name(self.callback)

    def traceback(self) -> str:
        """The error's traceback from the callback's own frame on, chained errors included."""
        frames = self.error.__traceback__
        while frames is not None and _is_caller(frames):
            frames = frames.tb_next
        return "".join(traceback.format_exception(type(self.error), self.error, frames))

    def __str__(self) -> str:
        error = traceback.format_exception_only(type(self.error), self.error)[-1].strip()
        return f"{self.name} raised {error}"


class OnCommitError(AssertionError):
    """``on_commit`` callbacks raised in a block that :func:`failed_callbacks` watched."""


class FailedCallbacks(Sequence[FailedCallback]):
    """The callbacks that raised while the block of :func:`failed_callbacks` ran, in order;
    filled while it runs."""

    def __init__(self) -> None:
        self._failed: list[FailedCallback] = []
        self._checked = 0

    @overload
    def __getitem__(self, index: int) -> FailedCallback: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[FailedCallback]: ...
    def __getitem__(self, index: int | slice) -> FailedCallback | Sequence[FailedCallback]:
        return self._failed[index]

    def __len__(self) -> int:
        return len(self._failed)

    def __repr__(self) -> str:
        return f"<FailedCallbacks {[str(failed) for failed in self._failed]!r}>"

    def check(self) -> None:
        """Raise if a callback raised since the last ``check()`` (or the block began).

        Raises:
            OnCommitError: naming each of those callbacks, with its traceback.
        """
        new, self._checked = self._failed[self._checked :], len(self._failed)
        if new:
            raise OnCommitError(describe(new))

    def _add(self, callback: Callable[[], Any], error: Exception) -> None:
        self._failed.append(FailedCallback(callback, error))


def describe(failed: Sequence[FailedCallback]) -> str:
    """What :meth:`FailedCallbacks.check` says of ``failed``: each callback and its error,
    then each traceback."""
    if len(failed) == 1:
        head = f"The on_commit callback {failed[0]}."
        tracebacks = [failed[0].traceback()]
    else:
        head = f"{len(failed)} on_commit callbacks raised: {'; '.join(map(str, failed))}."
        tracebacks = [f"{item.name}:\n{item.traceback()}" for item in failed]
    note = (
        f"{'It' if len(failed) == 1 else 'They'} ran after the commit: in production the "
        "error is only logged (the `dbscope` logger), and the commit stands."
    )
    return "\n\n".join([f"{head}\n{note}", *(text.rstrip() for text in tracebacks)])


@contextlib.contextmanager
def failed_callbacks() -> Iterator[FailedCallbacks]:
    """Collect the ``on_commit`` callbacks that raise while the block runs.

    Those of every unit of work in the process count, whichever Database, task, event loop
    or thread ran it: a request's, a ``db.transaction()`` block's, a unit of a task the test
    started. They are still logged. ``check()`` on what it yields raises
    :class:`OnCommitError` if there were any::

        with failed_callbacks() as failed:
            await http.post("/orders", json={...})
        failed.check()

    Yields:
        The callbacks that raised, filled as they do.
    """
    failed = FailedCallbacks()
    with watch_failures(failed._add):
        yield failed


def _is_caller(frames: TracebackType) -> bool:
    filename = frames.tb_frame.f_code.co_filename
    return Path(filename).resolve() == _CALLER


def _name(callback: object) -> str:
    if isinstance(callback, functools.partial):
        given = [*map(reprlib.repr, callback.args)]
        given += [f"{key}={reprlib.repr(value)}" for key, value in callback.keywords.items()]
        return f"functools.partial({', '.join([_name(callback.func), *given])})"
    function = getattr(callback, "__func__", callback)  # a bound method: its function
    qualname = getattr(function, "__qualname__", None)
    code = getattr(function, "__code__", None)
    if not isinstance(qualname, str):
        return repr(callback)
    name = f"{getattr(function, '__module__', None) or '?'}.{qualname}"
    if "<" in qualname and code is not None:  # <lambda>, <locals>: found by where it is
        name += f" ({shown_path(code.co_filename)}:{code.co_firstlineno})"
    return name
