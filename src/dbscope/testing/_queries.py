"""Counting the statements a block of code sends, to catch an N+1 in a test.

``count_queries(db)`` listens to SQLAlchemy's ``before_cursor_execute`` on the engine the
Database runs on now: its own, or while a test binds it (:func:`rolled_back`, the pytest
plugin), the test connection's, so that the requests of the test client count as well. The
listener exists only inside the block, so code that is not counted pays nothing.

Left out by default, so that the same code counts the same on every driver:

- transaction control (``BEGIN``, ``COMMIT``, ``ROLLBACK``, ``SAVEPOINT``, ``RELEASE``,
  ``ROLLBACK TO``). Most drivers commit and roll back through calls that send no statement
  SQLAlchemy sees; SQLite's ``BEGIN`` and every savepoint do pass through it. Told by the first
  keyword, which is unambiguous;
- dbscope's own statements at each transaction (``SET LOCAL``, ``SET TRANSACTION READ ONLY``,
  ``max_statement_time``, the request's ``application_name``, the ``search_path``, SQLite's
  ``BEGIN``) and a replica's replay check: dbscope sends them with an execution option that
  marks them (``dbscope._dialects.OWN``), so they are known without reading their text.

Liveness pings (dbscope's checkout check, SQLAlchemy's ``do_ping``) and the primary's log
position read after a commit go to the driver's own cursor, never through SQLAlchemy's
execution, so no listener sees them. ``everything=True`` keeps the first two kinds.

Each statement keeps its shape and where it came from (``_shapes``), found as it runs.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, overload

from sqlalchemy import event
from sqlalchemy.engine import Engine

from dbscope import ConfigurationError, Database
from dbscope._dialects import OWN_STATEMENT
from dbscope.testing._shapes import has_added_offsets, origin, shape

TRANSACTION_CONTROL: Final = re.compile(
    r"\s*(?:(?:/\*.*?\*/|--[^\n]*)\s*)*"
    r"(?:BEGIN|START\s+TRANSACTION|COMMIT|ROLLBACK|SAVEPOINT|RELEASE|END)\b",
    re.IGNORECASE | re.DOTALL,
)
TIMES: Final = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True, slots=True)
class LoggedStatement:
    """One statement a counted block sent.

    Attributes:
        sql: the statement as it went to the driver, its parameters apart.
        shape: the statement with its values and placeholders as ``?``, lists of them as
            ``(...)`` and the columns of each ``SELECT`` as ``...``: the same for every run of
            the same code, on every driver.
        origin: ``path:line`` of the code that ran it (the path relative to the current
            directory when inside it); None when no such frame was found.
    """

    sql: str
    shape: str
    origin: str | None


class QueryCountError(AssertionError):
    """A counted block ran more (or other than exactly the) statements than allowed."""


class QueryLog(Sequence[LoggedStatement]):
    """The statements a counted block sent, in order; filled while the block runs."""

    def __init__(self) -> None:
        self._statements: list[LoggedStatement] = []

    @overload
    def __getitem__(self, index: int) -> LoggedStatement: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[LoggedStatement]: ...
    def __getitem__(self, index: int | slice) -> LoggedStatement | Sequence[LoggedStatement]:
        return self._statements[index]

    def __len__(self) -> int:
        return len(self._statements)

    def __iter__(self) -> Iterator[LoggedStatement]:
        return iter(self._statements)

    def __repr__(self) -> str:
        return f"<QueryLog of {_statements(len(self))}>"

    def shapes(self) -> Counter[str]:
        """How many times each shape ran."""
        return Counter(statement.shape for statement in self._statements)

    def check(self, *, exactly: int | None = None, at_most: int | None = None) -> None:
        """Fail unless the block ran ``exactly`` statements, or ``at_most`` that many.

        Raises:
            QueryCountError: the count is off; the message leads with the most repeated
                shape and where it ran, then lists every statement.
            ConfigurationError: neither or both bounds given, or one is not a count.
        """
        expected = check_bounds(exactly, at_most)
        ran = len(self)
        if (exactly is not None and ran != exactly) or (at_most is not None and ran > at_most):
            raise QueryCountError(self.report(expected))

    def report(self, expected: str | None = None) -> str:
        """The count, what was ``expected`` (``"at most 2"``, optional), the most repeated
        shape with how many times and where it ran, then every statement, numbered."""
        head = f"ran {_statements(len(self))}"
        if expected:
            head += f", {expected}"
        repeated = self._most_repeated()
        if repeated:
            head += f"; {repeated}"
        lines = [head]
        for number, statement in enumerate(self._statements, 1):
            where = f"  ({statement.origin})" if statement.origin else ""
            lines.append(f"{number:4}. {' '.join(statement.sql.split())}{where}")
        return "\n".join(lines)

    def _most_repeated(self) -> str:
        if not self._statements:
            return ""
        shape, times = self.shapes().most_common(1)[0]
        if times < 2:
            return ""
        origins = Counter(s.origin for s in self._statements if s.shape == shape and s.origin)
        text = f"{times} {TIMES} `{shape}`"
        if origins:
            (origin, _), *others = origins.most_common()
            text += f" from {origin}"
            if others:
                text += f" and {len(others)} other place{'s' if len(others) > 1 else ''}"
        return text

    def _add(self, statement: str, *, offsets_added: bool = False) -> None:
        described = shape(statement, offsets_added=offsets_added)
        self._statements.append(LoggedStatement(statement, described, origin()))


class Counting:
    """The block :func:`count_queries` and :func:`assert_queries` give: ``async with`` it
    (or ``with``, in synchronous code), and it yields the :class:`QueryLog`."""

    def __init__(self, db: Database, *, everything: bool = False) -> None:
        if not isinstance(everything, bool):
            message = f"everything={everything!r} is not a bool; give True or False."
            raise ConfigurationError(message)
        self._db = db
        self._everything = everything
        self._bounds: tuple[int | None, int | None] | None = None
        self._engine: Engine | None = None
        self.log = QueryLog()

    def _expecting(self, exactly: int | None, at_most: int | None) -> Counting:
        """Check the count at the end of the block (:meth:`QueryLog.check`)."""
        check_bounds(exactly, at_most)
        self._bounds = (exactly, at_most)
        return self

    def __enter__(self) -> QueryLog:
        if self._engine is not None:
            message = "This count_queries() block is in use already; open a new one."
            raise RuntimeError(message)
        # The engine now: the test connection's while the Database is bound to one.
        self._engine = self._db.engine.sync_engine
        event.listen(self._engine, "before_cursor_execute", self._record)
        return self.log

    def __exit__(
        self,
        error_type: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._engine is not None:
            event.remove(self._engine, "before_cursor_execute", self._record)
            self._engine = None
        if error_type is None and self._bounds is not None:
            exactly, at_most = self._bounds
            self.log.check(exactly=exactly, at_most=at_most)

    def _record(
        self,
        connection: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        if not self._everything:
            options = context.execution_options if context is not None else {}
            if options.get(OWN_STATEMENT) or TRANSACTION_CONTROL.match(statement):
                return
        self.log._add(statement, offsets_added=has_added_offsets(statement, context))

    async def __aenter__(self) -> QueryLog:
        return self.__enter__()

    async def __aexit__(self, *exc_info: Any) -> None:
        self.__exit__(*exc_info)


def count_queries(db: Database, *, everything: bool = False) -> Counting:
    """Count the statements ``db`` runs inside the block: ``async with count_queries(db) as
    log:``, then ``len(log)``.

    Counted: every statement sent through the engine ``db`` runs on when the block begins
    (its own; while bound to a test's connection, that connection's, requests through the
    test client included), by any task. Transaction control and dbscope's own statements are
    left out (see the module's docstring) unless ``everything`` is true.

    Raises:
        ConfigurationError: ``db`` is not a Database.
        LifecycleError: on entry, ``db`` is neither connected nor bound.
    """
    _check_database(db, "count_queries")
    return Counting(db, everything=everything)


def assert_queries(
    db: Database,
    *,
    exactly: int | None = None,
    at_most: int | None = None,
    everything: bool = False,
) -> Counting:
    """Count as :func:`count_queries`, and fail at the end of the block unless the block ran
    ``exactly`` statements (or ``at_most`` that many): ``async with assert_queries(db,
    at_most=2):``. A block that raises is not checked; its own error goes on.

    Raises:
        QueryCountError: at the end of the block, the count is off. The message leads with
            the most repeated statement and where it ran, then lists them all.
        ConfigurationError: ``db`` is not a Database, neither or both of ``exactly`` and
            ``at_most`` are given, or one is not a count.
    """
    _check_database(db, "assert_queries")
    return Counting(db, everything=everything)._expecting(exactly, at_most)


class QueryCounter:
    """Counts the statements of one Database: what the pytest fixture ``dbscope_queries`` is.

    ``counter(at_most=2)`` (or ``exactly=``) is :func:`assert_queries` on it; ``counter()``
    with no bound, :func:`count_queries`.
    """

    def __init__(self, db: Database) -> None:
        _check_database(db, "QueryCounter")
        self.db = db

    def __call__(
        self,
        *,
        exactly: int | None = None,
        at_most: int | None = None,
        everything: bool = False,
    ) -> Counting:
        """A counted block on the Database: checked at its end if a bound is given."""
        counting = Counting(self.db, everything=everything)
        unbounded = exactly is None and at_most is None
        return counting if unbounded else counting._expecting(exactly, at_most)

    def __repr__(self) -> str:
        return f"QueryCounter({self.db!r})"


def check_bounds(exactly: int | None, at_most: int | None) -> str:
    """What the bounds expect, as the failure message says it (``"at most 2"``).

    Raises:
        ConfigurationError: neither or both given, or one is not a count (an int >= 0).
    """
    if (exactly is None) == (at_most is None):
        message = (
            f"Give one bound of the statements, exactly= or at_most= (got exactly={exactly!r}, "
            f"at_most={at_most!r}); e.g. assert_queries(db, at_most=2)."
        )
        raise ConfigurationError(message)
    name, value = ("exactly", exactly) if exactly is not None else ("at_most", at_most)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        message = f"{name}={value!r} is not a number of statements; give an int, 0 or more."
        raise ConfigurationError(message)
    return f"expected exactly {value}" if name == "exactly" else f"at most {value}"


def _statements(count: int) -> str:
    return f"{count} statement{'' if count == 1 else 's'}"


def _check_database(db: object, caller: str) -> None:
    if not isinstance(db, Database):
        # Only the type: a URL given by mistake may hold a password.
        message = (
            f"{caller}() counts the statements of a dbscope Database, and was given a "
            f"{type(db).__name__}; pass the app's `db = Database(...)`."
        )
        raise ConfigurationError(message)
