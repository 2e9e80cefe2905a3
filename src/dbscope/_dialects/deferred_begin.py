"""A unit's reads before its first write, run without a transaction (PostgreSQL).

At READ COMMITTED, PostgreSQL's default level, each statement of a transaction takes a
snapshot of its own: a plain read (a SELECT that locks nothing and calls no function but a
pure one) sees the same rows inside a transaction as outside one. So a unit's transaction
begins with its first statement that is *not* a plain read (a write, a ``SET LOCAL``, a
savepoint, SQL text, a locking read, a stream's cursor), and every statement from there on
runs in it: a unit that fails after it wrote rolls all its writes back, as before. A unit that
only reads sends neither BEGIN nor COMMIT, two round trips of a one-query request's three
(docs/units-of-work.md, "When the transaction begins").

The reads before the first write are run by the driver in autocommit: SQLAlchemy's adapters of
asyncpg and psycopg send BEGIN themselves before a statement unless autocommit is on, and their
commit and rollback do nothing when no transaction was begun. What a unit can see differs in
one respect only: a read's lock on its tables ends with the statement, not with the unit, so a
schema change waiting for the table may run between the unit's read and its first write.

Behind PgBouncer in transaction mode a read outside a transaction holds a server connection
for that read alone, and each of the driver's exchanges stands on its own (unnamed statements
parsed again where they run, or prepared statements that PgBouncer prepares on each server
connection: _dialects/pgbouncer.py), whichever server connection serves it.

Left alone, each beginning its transaction at the first statement as ever: units at another
isolation level (the unit's, the engine's or the server's default), and a transaction already
begun by the test that lends its connection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final
from weakref import WeakSet

from sqlalchemy import event
from sqlalchemy.engine import Connection, Dialect, ExecutionContext
from sqlalchemy.engine.interfaces import Compiled
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import ColumnClause, TextClause
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.selectable import Select

from dbscope._dialects.driver import LeaseStatus

READ_COMMITTED: Final = "READ COMMITTED"
# On a pooled connection's info, from the start of a unit's transaction to its first
# statement that is not a plain read (or to its checkin, if it only read).
DEFERRED: Final = "dbscope.deferred_begin"
# Functions that only compute from their arguments and the rows read: a read that calls them
# sees and does the same outside a transaction. Any other begins the transaction first:
# now() (the transaction's time), nextval(), pg_advisory_xact_lock(), set_config(), and any
# function of the application's, which may write.
PURE_FUNCTIONS: Final = frozenset(
    {
        # aggregates and window functions
        "count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every", "array_agg",
        "string_agg", "json_agg", "jsonb_agg", "json_object_agg", "jsonb_object_agg",
        "row_number", "rank", "dense_rank", "percent_rank", "cume_dist", "lag", "lead",
        "first_value", "last_value", "nth_value",
        # comparisons, strings, numbers, JSON
        "coalesce", "nullif", "greatest", "least", "lower", "upper", "length", "char_length",
        "octet_length", "concat", "concat_ws", "substr", "substring", "trim", "btrim",
        "ltrim", "rtrim", "replace", "strpos", "left", "right", "abs", "round", "floor",
        "ceil", "ceiling", "mod", "power", "sqrt", "json_build_object", "jsonb_build_object",
        "json_build_array", "jsonb_build_array",
    }
)  # fmt: skip

# The dialects of the engines that defer (an engine's views share its dialect).
_deferring: WeakSet[Dialect] = WeakSet()
# Whether a statement is a plain read, by its SQL: judged once per statement shape (SQLAlchemy
# renders the same SQL for it again and again, and the same SQL does the same on the server,
# whatever built it). Keyed by the text, a plain dict lookup: a weak key costs a weakref per
# statement. Emptied when full, for the applications whose SQL is never the same twice.
_verdicts: dict[str, bool] = {}
_VERDICTS_KEPT: Final = 2000


def install(engine: AsyncEngine, status: Callable[[Any], LeaseStatus]) -> None:
    """Let the units on ``engine`` begin their transactions at their first statement that is
    not a plain read; ``status`` tells whether a driver connection is in a transaction."""
    sync_engine = engine.sync_engine
    _deferring.add(sync_engine.dialect)

    # Listened to as the dialect's events, just before the driver runs each statement (where
    # the driver sends its BEGIN), not as the engine's before_cursor_execute: an engine
    # listener makes every connection dispatch all its events, some 100,000 instructions a
    # request.
    def before_statement(cursor: Any, statement: str, parameters: Any, context: Any) -> None:
        connection = context.root_connection
        adapted = connection.connection.dbapi_connection
        assert adapted is not None  # a connection that runs a statement has one
        if adapted.autocommit and _plain_read(context):
            return  # a unit still reading (only this module turns autocommit on in a unit)
        try:
            info = connection.info
        except NotImplementedError:
            return  # the engine's first connection, on which SQLAlchemy learns the server
        if DEFERRED not in info:
            return
        if _plain_read(context) and status(adapted.driver_connection) == "idle":
            if not adapted.autocommit:
                adapted.autocommit = True
            return
        del info[DEFERRED]  # this statement begins the transaction, or joins the one begun
        if adapted.autocommit:
            adapted.autocommit = False

    def before_other(cursor: Any, statement: str, context: Any, *_: Any) -> None:
        before_statement(cursor, statement, None, context)

    event.listen(sync_engine, "do_execute", before_statement)
    event.listen(sync_engine, "do_executemany", before_statement)
    event.listen(sync_engine, "do_execute_no_params", before_other)
    event.listen(sync_engine, "checkin", _end_deferral)


def defer(connection: Connection) -> None:
    """Let the transaction ``connection`` has just begun (a unit's) wait for its first
    statement that is not a plain read, where its engine and levels allow."""
    # At another level a read outside the transaction would not see the transaction's
    # snapshot. SQLAlchemy's default level is the engine's isolation_level if it was given,
    # else the server's, as read at the first connection; the unit's is on the connection.
    dialect = connection.dialect
    if (
        dialect in _deferring
        and dialect.default_isolation_level == READ_COMMITTED
        and connection.get_execution_options().get("isolation_level", READ_COMMITTED)
        == READ_COMMITTED
    ):
        connection.info[DEFERRED] = True


def only_read(connection: Connection) -> bool:
    """Whether the transaction ``connection`` is in never began on the server: every statement
    of it so far was a plain read, so it wrote nothing."""
    return DEFERRED in connection.info


def _end_deferral(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    # A unit that only read returns its connection in autocommit: the next user of the
    # connection (a unit, a lease, the engine's own user) gets it as SQLAlchemy left it.
    deferred = record.info.pop(DEFERRED, None)
    if not (deferred and dbapi_connection is not None and dbapi_connection.autocommit):
        return
    try:
        dbapi_connection.autocommit = False
    except Exception:
        # psycopg's switch is a coroutine, which cannot run outside SQLAlchemy's greenlet (a
        # connection collected rather than returned): it must not be lent again as it is.
        record.invalidate()


def _plain_read(context: ExecutionContext) -> bool:
    compiled = context.compiled
    if compiled is None or context.execution_options.get("stream_results"):
        return False  # SQL the driver gets as text, or a server-side cursor (needs BEGIN)
    verdict = _verdicts.get(compiled.string)
    if verdict is None:
        if len(_verdicts) >= _VERDICTS_KEPT:
            _verdicts.clear()
        verdict = _verdicts[compiled.string] = _reads_only(compiled)
    return verdict


def _reads_only(compiled: Compiled) -> bool:
    compile_state = getattr(compiled, "compile_state", None)
    # The statement SQLAlchemy compiled: for an ORM query, with the mapped columns spelled out.
    statement = getattr(compile_state, "statement", None)
    if statement is None:
        statement = compiled.statement
    if not isinstance(statement, Select):
        return False
    return all(_reads_plainly(element) for element in visitors.iterate(statement))


def _reads_plainly(element: Any) -> bool:
    if isinstance(element, Select):
        return not _locks_or_adds_text(element)  # a Select of SQLModel's, say, is one too
    if not type(element).__module__.startswith("sqlalchemy."):
        return False  # a construct of the application's (@compiles) may render any SQL
    if isinstance(element, UpdateBase | TextClause):
        return False  # a write in a CTE, or SQL text that may do anything
    if isinstance(element, ColumnClause) and element.is_literal and element.name != "*":
        return False  # literal_column(): SQL text as a column (count()'s * is one too)
    if isinstance(element, FunctionElement):
        # By its plain name only: myschema.count() is a function of the application's.
        return element.name.lower() in PURE_FUNCTIONS and not getattr(element, "packagenames", ())
    return True


def _locks_or_adds_text(select: Select[Any]) -> bool:
    # FOR UPDATE/SHARE, or SQL text around the statement, which a traversal does not visit:
    # suffix_with("FOR UPDATE SKIP LOCKED") is how many job queues lock their rows.
    return bool(
        select._for_update_arg is not None
        or select._prefixes
        or select._suffixes
        or select._hints
        or select._statement_hints
    )
