"""What a rollback of a savepoint the connection itself holds undoes, besides the data.

A unit follows its session's savepoints (``session.begin_nested()``) by the session's events.
A savepoint of the connection's own (``(await session.connection()).begin_nested()``) emits
none of them: its rollback undoes the rows and the ``SET LOCAL`` run under it, and nothing
told the unit, which kept the on-commit callbacks registered there and took the schema set
there for the one in force. So what the unit does under such a savepoint leaves an undo here,
run when that savepoint, or one around it, rolls back.

Listened for on the Connection alone, from the first undo left on it: a Connection event makes
SQLAlchemy dispatch at each of its statements, which units that leave none never pay. Gone
with the Connection: a pooled unit's at its end, a test's connection (every unit a savepoint
of it) at the test's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple
from weakref import WeakKeyDictionary

from sqlalchemy import event
from sqlalchemy.engine import Connection, NestedTransaction


class _Undo(NamedTuple):
    # The innermost savepoint when it was left.
    savepoint: NestedTransaction
    undo: Callable[[], None]
    # Whether it no longer matters (its callback committed, its unit ended): forgotten.
    moot: Callable[[], bool]


_undos: WeakKeyDictionary[Connection, list[_Undo]] = WeakKeyDictionary()


def innermost_savepoint(connection: Connection | None) -> NestedTransaction | None:
    """The innermost savepoint open on ``connection``, if any (the connection's own or a
    session's)."""
    if connection is None or connection.closed:
        return None
    return connection.get_nested_transaction()


def undo_on_rollback(
    connection: Connection,
    savepoint: NestedTransaction,
    undo: Callable[[], None],
    moot: Callable[[], bool],
) -> None:
    """Run ``undo`` if ``savepoint`` (open on ``connection``), or one it was begun in, rolls
    back, unless ``moot()`` says it no longer matters by then."""
    found = _undos.get(connection)
    if found is None:
        found = _undos[connection] = []
        event.listen(connection, "rollback_savepoint", _rolled_back)
    found.append(_Undo(savepoint, undo, moot))


def release_savepoints_inside(connection: Connection, outer: NestedTransaction) -> None:
    """Release the savepoints of ``connection`` still open inside ``outer``, innermost first,
    as the COMMIT of a transaction does with those inside it: ``outer``'s release then finds
    itself the innermost, where SQLAlchemy warned ("nested transaction already deassociated
    from connection") and left the connection pointing at a savepoint that was gone."""
    savepoint = connection.get_nested_transaction()
    while savepoint is not None and savepoint is not outer and _within(savepoint, outer):
        savepoint.commit()
        savepoint = connection.get_nested_transaction()


def _rolled_back(connection: Connection, name: str, context: Any) -> None:
    # Called before the ROLLBACK TO SAVEPOINT, while its savepoint is still the innermost.
    rolled_back = connection.get_nested_transaction()
    undos = _undos.get(connection)
    if rolled_back is None or not undos:
        return
    kept = [each for each in undos if not each.moot()]
    undone = [each for each in kept if _within(each.savepoint, rolled_back)]
    undos[:] = [each for each in kept if not _within(each.savepoint, rolled_back)]
    for each in reversed(undone):  # the last first: the first one's puts back the oldest
        each.undo()


def _within(savepoint: NestedTransaction | None, outer: NestedTransaction) -> bool:
    """Whether ``savepoint`` is ``outer`` or was begun inside it (released since, or not)."""
    while savepoint is not None:
        if savepoint is outer:
            return True
        # The savepoint it was begun in, kept after its end; SQLAlchemy has no public name
        # for it (tests/test_savepoints.py fails if it goes).
        savepoint = savepoint._previous_nested
    return False
