"""The errors of a unit of work used wrongly by the application: one session used by two tasks
or from another event loop, a unit that waits for a connection or a lock its own outer unit
holds, a unit opened inside another while bound to a test's connection (a warning). Made
here, where the messages name the fix; raised where the misuse is seen (``_async_session.py``,
``_unit_of_work.py``) and by the one door (``_errors.translate``) for what a driver says.
"""

from __future__ import annotations

from typing import Final

from dbscope._exceptions import ConfigurationError, DatabaseUnavailableError, SessionSharedError


def shared_session() -> SessionSharedError:
    """The error for one session used by two tasks at once."""
    message = (
        "One session was used by two tasks at once (asyncio.gather over one session, or a "
        "task started with asyncio.create_task that still uses it?). A session and its "
        "connection run one statement at a time: give each concurrent query its own session "
        "with `await db.parallel(...)`, await the task before the session is used again, or "
        "give the task a unit of its own (`async with db.transaction() as session:`)."
    )
    return SessionSharedError(message)


def units_at_once_in_a_test() -> SessionSharedError:
    """The error for a unit that begins on a test's connection while another one, not its
    outer unit, is open there."""
    message = (
        "Two units of work ran at once on the test's one connection (asyncio.gather() or a "
        "TaskGroup over requests, or a task the app started that opens a unit while another "
        "runs): in a test bound to its connection every request and db.transaction() block "
        "is a savepoint of the test's transaction, and that connection serves one unit at a "
        "time. Send the requests one after another; to test requests at once, send them to "
        "the app on a Database of its own, with a pool, on the test database "
        "(docs/testing.md, 'Concurrent requests')."
    )
    return SessionSharedError(message)


def units_in_one_task_in_a_test() -> SessionSharedError:
    """The error for a unit that begins on a test's connection while another one, not its
    outer unit, is open there in the same task: the sessions of two Databases bound to the
    one connection, used in one request."""
    message = (
        "Two units of work ran at once on the test's one connection, in one task: the "
        "sessions of two Databases bound to that connection, used in one request (or one "
        "Database's db.transaction() block inside the other's unit). The connection serves "
        "one unit at a time, and the first cannot end before the second. Give the second "
        "Database a test database of its own (docs/testing.md, 'One Database is bound')."
    )
    return SessionSharedError(message)


def connected_beside_a_test(label: str) -> str:
    """The warning for a Database that connects to its own database while a test binds
    another Database to its connection: the second Database of an app, forgotten."""
    return (
        f"{label} connected to its own database while a test binds another Database to its "
        "connection: what its units write there is committed for real, and not rolled back "
        "with the test. Give it a test database of its own (docs/testing.md, 'One Database "
        "is bound'), or bind it to the test's connection too."
    )


# Bound to a test's connection, every unit is a savepoint of the test's transaction: one opened
# inside another is a savepoint of that one, where in production it is a transaction apart.
NESTED_IN_A_TEST: Final = (
    "A unit of work opened inside another (db.transaction() in a request, a second session "
    "dependency with other options) runs here as a savepoint of the outer one, on the test's "
    "connection; in production it is a second transaction on a connection of its own: it "
    "commits on its own (the outer one's rollback keeps it) and waits for the row locks of "
    "the outer one (for ever on PostgreSQL; on SQLite one that may write is refused inside "
    "one that may write and has run a statement, as it would wait for its lock). Do the "
    "inner work in the outer unit (session.begin_nested() for a part that may fail), or "
    "test it on a real pool."
)


def waiting_for_itself(error: DatabaseUnavailableError) -> DatabaseUnavailableError:
    """``error``, a pool timeout of a unit opened inside another unit of the same pool, that
    says so: the task waited while holding a connection of its own, which no retry frees."""
    message = (
        f"{error} This task's own unit of work holds a connection of this pool already: "
        "a unit opened inside it (db.transaction() in a request, a second session "
        "dependency with other options) waits for a second one, and with the pool taken it "
        "waits for itself. Do the inner work in the outer unit (session.begin_nested() for a "
        "part that may fail on its own)."
    )
    return DatabaseUnavailableError(
        message, cause=error.cause, retry_after=error.retry_after, public_message=message
    )


def waits_for_its_own_lock(lock: str) -> ConfigurationError:
    """The error for a unit that may write, opened inside another unit of its task that holds
    ``lock``, the one a writer needs: it would wait for a unit that cannot end first."""
    message = (
        f"This unit of work may write, so it needs {lock}, which a unit of work of this same "
        "task holds until it ends (on SQLite one transaction at a time may write, from its "
        "first statement): waiting, it would wait for itself. Write in the outer unit "
        "(db.current_session(); session.begin_nested() for a part that may fail on its "
        "own), open this one after the outer one has ended, or make one of them read-only "
        "(db.transaction(read_only=True), Depends(db.read_session))."
    )
    return ConfigurationError(message)


def other_loop() -> SessionSharedError:
    """The error for a unit's session used in an event loop other than its unit's."""
    message = (
        "This session belongs to a unit of work of another event loop (asyncio.run() or a "
        "thread's loop, in a `def` endpoint?): its connection's driver runs in the unit's "
        "loop. Make the endpoint `async def` and await the session there, or open a unit of "
        "this loop's own with `async with db.transaction() as session:`."
    )
    return SessionSharedError(message)
