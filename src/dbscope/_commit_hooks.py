"""Work after commit: ``on_commit`` callbacks, kept on the unit's state.

A callback belongs to the (possibly nested) transaction it was registered in: it is dropped
when that transaction or a savepoint around it rolls back (the session's, followed by its
events, or the connection's own, by ``_savepoints.py``), and becomes due when the outermost
transaction commits; the unit runs what is due after its end. The commits are counted too, for
a retried unit that must not run again after one (``_retry.py``): the unit's own, and, while a
retried attempt runs, every unit's committed in its context (another Database's, or a
``transaction()`` opened inside the attempt), which running the attempt again would repeat.

A callback that raises is logged, never raised: the commit is done. Test code may also hear
of it (:func:`watch_failures`, which ``dbscope.testing.failed_callbacks()`` uses, so that the
pytest plugin fails the test); in production no one listens, and a failure costs nothing more.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator
from contextvars import ContextVar, Token

from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from dbscope._exceptions import ConfigurationError
from dbscope._savepoints import innermost_savepoint, undo_on_rollback
from dbscope._session import CommitHook, UnitSession, UnitState, unit_state

logger = logging.getLogger("dbscope")

FailureListener = Callable[[CommitHook, Exception], None]
# Told of each callback that raises, in any task, loop or thread: test code's collectors.
_failure_listeners: list[FailureListener] = []


class CommitCount:
    """The commits of every unit of work in a context (and the tasks it starts) while a
    retried attempt runs there; ``outer`` is the attempt's it runs inside, if any, which
    counts them too."""

    __slots__ = ("outer", "value")

    def __init__(self, outer: CommitCount | None = None) -> None:
        self.value = 0
        self.outer = outer


# None outside retried attempts: a commit there costs one lookup.
_counting: ContextVar[CommitCount | None] = ContextVar("dbscope_commit_count", default=None)


def count_commits() -> tuple[CommitCount, Token[CommitCount | None]]:
    """Count the commits made in this context from now on, and the token that ends it.

    Inside an attempt that counts already, the commits are that one's too, so that an outer
    attempt sees what an inner one committed (@db.retry over @billing.retry); but not the
    other way round: two attempts side by side in tasks of one attempt (``gather``) each
    count their own, and one's commit is no part of the other's work.
    """
    count = CommitCount(_counting.get())
    return count, _counting.set(count)


def stop_counting(token: Token[CommitCount | None] | None) -> None:
    """End what ``count_commits()`` began (the token may belong to a context that is gone)."""
    if token is not None:
        with contextlib.suppress(ValueError):
            _counting.reset(token)


def add_commit_hook(session: Session, state: UnitState, callback: CommitHook) -> None:
    """Register ``callback`` on the innermost transaction of ``session`` now.

    Raises:
        TypeError: ``callback`` is not callable (a coroutine, ``notify()`` for ``notify``),
            or needs arguments: refused here rather than failing after the commit.
        ConfigurationError: the unit is read-only, so it never commits: the callback would
            be dropped without a word (Django runs it after any atomic block that commits).
    """
    if state.begin.read_only:
        message = (
            f"on_commit({callback!r}) in a read-only unit of work: it never commits, so the "
            "callback would never run. Register it in a unit that writes (db.session, "
            "db.transaction()), or call it directly."
        )
        raise ConfigurationError(message)
    if not callable(callback):
        coroutine = inspect.iscoroutine(callback)
        if coroutine:
            callback.close()  # never to run: closed, so that Python does not warn of it
        hint = " (a coroutine: pass the function, without calling it)" if coroutine else ""
        message = (
            f"on_commit() takes a function to call after the commit, with no arguments; got "
            f"{callback!r}{hint}. Use functools.partial(f, ...) to pass arguments."
        )
        raise TypeError(message)
    try:
        inspect.signature(callback).bind()
    except TypeError:
        # A callback that needs arguments failed after the commit, only logged.
        message = (
            f"on_commit() calls its callback with no arguments; {callback!r} needs some. Use "
            "functools.partial(f, ...) to pass them."
        )
        raise TypeError(message) from None
    except ValueError:
        pass  # no signature to read (some builtins): taken on trust
    transaction = session.get_nested_transaction() or session.get_transaction()
    entry = (transaction, callback)
    state.pending.append(entry)
    if transaction is not None:
        _follow_the_connections_savepoint(state, entry)


def _follow_the_connections_savepoint(
    state: UnitState, entry: tuple[SessionTransaction | None, CommitHook]
) -> None:
    """Drop ``entry`` if the innermost savepoint of the unit's connection, perhaps the
    connection's own (which no session event tells of), rolls back."""
    connection = state.connection
    savepoint = innermost_savepoint(connection)
    if connection is None or savepoint is None or savepoint is state.own_savepoint:
        return  # none, or the unit's own transaction (in a test): the session's events do

    def drop() -> None:
        state.pending[:] = [each for each in state.pending if each is not entry]

    def moot() -> bool:  # committed, or dropped already
        return all(each is not entry for each in state.pending)

    undo_on_rollback(connection, savepoint, drop, moot)


@event.listens_for(UnitSession, "after_commit")
def _transaction_committed(session: Session) -> None:
    # SQLAlchemy calls it for a released savepoint too, which is still the session's current
    # transaction then: its hooks stay pending until the transaction around it commits, and
    # nothing was committed (a retried unit's released savepoint was taken for a commit()).
    state = unit_state(session)
    if state is not None and not session.in_nested_transaction():
        state.commits += 1
        count = _counting.get()
        while count is not None:
            count.value += 1
            count = count.outer
        state.due.extend(callback for _, callback in state.pending)
        state.pending.clear()


@event.listens_for(UnitSession, "after_soft_rollback")
def _drop_rolled_back_hooks(session: Session, previous_transaction: SessionTransaction) -> None:
    state = unit_state(session)
    if state is not None and state.pending:
        # The entries themselves, not copies: _follow_the_connections_savepoint knows them so.
        state.pending[:] = [
            entry for entry in state.pending if not _inside(entry[0], previous_transaction)
        ]


def _inside(transaction: SessionTransaction | None, outer: SessionTransaction) -> bool:
    if outer.parent is None:
        return True  # the whole transaction rolled back
    while transaction is not None:
        if transaction is outer:
            return True
        transaction = transaction.parent
    return False


async def run_commit_hooks(state: UnitState) -> None:
    """Run the callbacks whose transaction committed, in registration order, and forget
    them; log, never raise, their errors."""
    if not state.due:
        return  # none, as for most units: nothing to allocate
    due, state.due = state.due, []
    for callback in due:
        try:
            result = callback()
            if inspect.isawaitable(result):
                await result
        except Exception as error:
            logger.exception("An on_commit callback failed: %r", callback)
            for listener in tuple(_failure_listeners):
                listener(callback, error)


@contextlib.contextmanager
def watch_failures(listener: FailureListener) -> Iterator[None]:
    """Tell ``listener`` of every on_commit callback that raises during the block, anywhere
    in the process, besides logging it."""
    _failure_listeners.append(listener)
    try:
        yield
    finally:
        _failure_listeners.remove(listener)
