"""The test run's own database, named after the one given, and the app's tables in it.

A run never touches the database it is given: as pytest-django does, it makes another one
beside it for the tests, marked as dbscope's, and drops it at the end; what it finds under
that name, and the tables in it, decide what it does (docs/testing.md, "The test
database"). Each server's way of naming, making, marking, finding and dropping a database
is on its record in ``dbscope._dialects``, the one private name this package uses.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from sqlalchemy import Connection, MetaData
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

from dbscope import Database, DbscopeError, _dialects
from dbscope._dialects import PoolerMode
from dbscope.testing._arguments import check_run_arguments, checked_worker
from dbscope.testing._isolation import (
    connection_held,
    create_schemas,
    create_tables,
    in_new_loop,
    maintenance_connection,
    on_connection,
    table_names,
)
from dbscope.testing._kept_tables import changed_tables, mark_tables

T = TypeVar("T")

SUFFIX: Final = "_test"
_log = logging.getLogger("dbscope")


@dataclass(frozen=True)
class OptionNames:
    """How messages name the URL and the options; the pytest plugin gives its settings'."""

    url: str = "the URL"
    reuse: str = "reuse=True"
    keep: str = "keep=True"
    use_existing_tables: str = "use_existing_tables=True"


class DatabaseSetupError(DbscopeError):
    """The test database or its tables cannot be set up as asked; the message says how."""


@contextlib.contextmanager
def own_database(
    url: str | URL,
    *,
    metadata: MetaData | None = None,
    alembic_config: str | Path | None = None,
    reuse: bool = False,
    keep: bool = False,
    use_existing_tables: bool = False,
    report: Callable[[str], None] | None = None,
    names: OptionNames | None = None,
    worker: str | None = None,
    pgbouncer: PoolerMode | None = None,
    tables_from: MetaData | None = None,
) -> Iterator[str]:
    """Make a database for the run beside the one ``url`` names, and drop it at the end.

    It is ``<name>_test`` on ``url``'s server (``<stem>_test.db`` beside a SQLite file),
    or ``<name>_test_<worker>`` for one of several processes that run the tests at once,
    made with dbscope's mark, with the tables of ``metadata`` or ``alembic_config`` in it.
    One that an earlier run left is made anew, or reused with ``reuse`` if its tables were
    made from the same definitions as ``metadata``'s (else made anew, saying what changed);
    one someone else made is used as it is and never dropped, and the app's tables in it are
    refused (:func:`own_tables`). Synchronous: call it with or without a running loop.

    Args:
        url: names the database to name the run's after; that one is never touched.
        metadata: the tables to make, as for :func:`create_tables`.
        alembic_config: the alembic.ini whose migrations make them instead, as for
            :func:`create_tables`.
        reuse: keep the database at the end, and reuse the one an earlier run kept.
        keep: keep the database at the end (the next run without ``reuse`` makes it anew).
        use_existing_tables: run on the app's tables in a database dbscope did not make,
            instead of refusing to; they are never dropped.
        report: receives a line for each thing worth knowing that the run does (a database
            reused or made anew, tables kept); default: the ``dbscope`` logger, at INFO.
        names: how messages name the URL and the options (:class:`OptionNames`).
        worker: names one of several processes running the tests at once (pytest-xdist's
            worker id, ``gw0``), letters, digits and ``_`` only: each gets a database of
            its own, made, set up and dropped by that process, so that none sees
            another's rows.
        pgbouncer: ``url`` names a PgBouncer in this mode, as the app's Database's
            ``pgbouncer`` setting says: the connections that make, fill and drop the
            database are made with it (docs/pgbouncer.md).
        tables_from: the metadata whose tables :func:`own_tables` makes in the database
            after this call (as the pytest plugin does), instead of ``metadata``: a kept
            database is reused only if its tables were made from the same definitions.

    Yields:
        The URL of the run's database, its password included, to connect to.

    Raises:
        ConfigurationError: the URL or ``worker`` is invalid, a flag is no bool, or another
            argument no value for it.
        DatabaseSetupError: no database can be named after the URL, the server refuses to
            make or drop it, or it has the app's tables and dbscope did not make it.
    """
    flags = {"reuse": reuse, "keep": keep, "use_existing_tables": use_existing_tables}
    check_run_arguments(
        flags,
        metadata=metadata,
        alembic_config=alembic_config,
        report=report,
        tables_from=tables_from,
    )
    run = _Run.named_after(url, names or OptionNames(), report or _log.info, worker, pgbouncer)
    # Migrations upgrade a kept database to head: no fingerprint of theirs to compare.
    expected = (tables_from or metadata) if alembic_config is None else None
    ours = run.find_or_make(reuse=reuse, expected=expected)
    try:
        with (
            run.held(ours),
            run.tables(metadata, alembic_config, ours, use_existing_tables, keep, reuse),
        ):
            yield run.rendered
    finally:
        if ours and (reuse or keep):
            kept_by = run.names.reuse if reuse else run.names.keep
            run.say(f"kept the test database {run.label} ({kept_by})")
        elif ours:  # what sessions remain are this run's own, left open by its tests
            run.drop(close_sessions=True)


@dataclass(frozen=True)
class _Run:
    """The database a run's tests use, its server's rules, and how the run speaks."""

    url: URL
    rules: _dialects.Backend
    names: OptionNames
    say: Callable[[str], None]
    pgbouncer: PoolerMode | None = None

    @classmethod
    def named_after(
        cls,
        url: str | URL,
        names: OptionNames,
        say: Callable[[str], None],
        worker: str | None = None,
        pgbouncer: PoolerMode | None = None,
    ) -> _Run:
        """The run's database: the one ``url`` names, its name followed by ``_test`` (and
        by ``_<worker>`` for one of several processes)."""
        suffix = SUFFIX if worker is None else SUFFIX + "_" + checked_worker(worker)
        # With pgbouncer: checked as the app's Database checks it (a mode, of a PostgreSQL
        # URL), where a SQLite run made no Database with it and took any.
        given = Database(url, pgbouncer=pgbouncer)
        resolved = given.url
        rules = _dialects.backend(resolved.get_backend_name())
        if given.settings.is_memory:
            message = (
                f"{names.url} names an in-memory SQLite database, but the tests run in a "
                f"database file of their own, named after the one {names.url} names: name a "
                "file, e.g. sqlite+aiosqlite:///test.db (the tests then run in test_test.db)."
            )
        elif rules not in _dialects.BACKENDS:
            *others, last = (known.title for known in _dialects.BACKENDS)
            message = (
                f"dbscope makes its test database on {', '.join(others)} and {last}, not on "
                f"{resolved.get_backend_name()!r}: point {names.url} at one of those."
            )
        elif not resolved.database:
            message = (
                f"{names.url} {resolved!r} names no database, and the tests run in a database "
                "of their own named after it: add the database's name to the URL, e.g. "
                ".../app (the tests then run in app_test)."
            )
        else:
            target = rules.database_named(resolved, suffix)
            name = target.database or ""
            limit = rules.too_long(name)
            if limit is None:
                return cls(target, rules, names, say, pgbouncer)
            message = (
                f"The test database's name {name!r} (the name in {names.url}, then {suffix!r}) "
                f"is longer than the {limit} {rules.name} allows: name a shorter database in "
                f"{names.url}."
            )
        raise DatabaseSetupError(message)

    @property
    def rendered(self) -> str:
        """The URL to connect to, password included."""
        return self.url.render_as_string(hide_password=False)

    @property
    def label(self) -> str:
        """The database and its server (or the file), for messages: no user, no password."""
        if self.rules.default_port is None:  # a file
            return repr(self.url.database)
        url = self.url
        server = f"{url.host}:{url.port}" if url.port else (url.host or "the local server")
        return f"{url.database!r} on {server}"

    def presence(self) -> _dialects.Found:
        """What the server holds under the database's name, and the fingerprint of the tables
        dbscope made there."""
        return in_new_loop(lambda: self.rules.database_presence(self.url, self._maintenance))

    def find_or_make(self, *, reuse: bool, expected: MetaData | None = None) -> bool:
        """Make the database, unless someone else made it or it is reused (only if its tables
        were made from ``expected``'s definitions, when given); True if dbscope made it (now
        or in an earlier run), and so may drop it."""
        found = self.presence()
        if found.presence == "unmarked":
            self.say(
                f"the test database {self.label} exists and dbscope did not make it: the tests "
                "run in it, and dbscope drops neither it nor any table it did not make"
            )
            return False
        changed = None
        if reuse and found.presence == "marked" and expected is not None:
            changed = changed_tables(found, expected, self.url, self.rules, self._on_connection)
        if found.presence == "marked" and reuse and changed is None:
            reusing = f"reusing the test database {self.label}, kept by an earlier run"
            self.say(f"{reusing} ({self.names.reuse})")
            return True
        if found.presence == "marked" and reuse:
            self.drop(close_sessions=False)
            self.say(
                f"made the test database {self.label} anew ({self.names.reuse}): the tables "
                f"an earlier run kept in it no longer match the metadata ({changed})"
            )
        elif found.presence == "marked":
            self.drop(close_sessions=False)
            self.say(
                f"dropped the test database {self.label}, left by an earlier run, to make it anew"
            )
        name = self.url.database or ""
        advice = (
            f"{self.rules.create_advice(name)}, or create {name!r} yourself once: the tests "
            "then run in it, and dbscope never drops it"
        )
        with self._refusals(f"create it: {advice}"):
            in_new_loop(lambda: self.rules.create_database(self.url, self._maintenance))
        return True

    def held(self, ours: bool) -> contextlib.AbstractContextManager[None]:
        """A connection kept open to the run's database while the run uses it, where the
        server then refuses another run's drop of it (:meth:`find_or_make`): between tests
        the run may hold none."""
        if ours and self.rules.connected_refuses_drop:
            return connection_held(self.url, pgbouncer=self.pgbouncer)
        return contextlib.nullcontext()

    def drop(self, *, close_sessions: bool) -> None:
        """Drop the database; ``close_sessions``: even while sessions use it."""
        hint = "drop it by hand"
        if not close_sessions:
            hint = (
                "if another test run uses it, give each run a database of its own "
                f"({self.names.url}); if none does, drop it by hand"
            )
        with self._refusals(f"drop it: {hint}"):
            drop = self.rules.drop_database
            in_new_loop(lambda: drop(self.url, self._maintenance, close_sessions=close_sessions))

    @contextlib.contextmanager
    def _refusals(self, failed: str) -> Iterator[None]:
        try:
            yield
        except _dialects.DatabaseRefused as error:
            message = f"the test database {self.url.database!r}: {error}; could not {failed}."
            raise DatabaseSetupError(message) from None

    @contextlib.contextmanager
    def tables(
        self,
        metadata: MetaData | None,
        alembic_config: str | Path | None,
        ours: bool,
        use_existing: bool,
        keep: bool,
        reuse: bool,
    ) -> Iterator[None]:
        """Make the app's tables, if any; at the end, unless the database is dbscope's
        (``ours``: they go with it), drop those made or keep them (:meth:`_leave_tables`)."""
        if metadata is None and alembic_config is None:
            yield
            return
        before = self._table_names(metadata)
        existing = sorted(before if metadata is None else before & set(metadata.tables))
        if existing and not (ours or use_existing):
            raise DatabaseSetupError(self._refusal(existing))
        if ours and metadata is not None:
            schemas = self.rules.schemas_to_create(metadata)
            self._on_connection(lambda connection: create_schemas(connection, schemas))
        create_tables(
            self.url, metadata=metadata, alembic_config=alembic_config, pgbouncer=self.pgbouncer
        )
        if ours and metadata is not None and alembic_config is None and not existing:
            mark_tables(metadata, self.url, self.rules, self._on_connection)
        made = self._table_names(metadata) - before
        try:
            yield
        finally:
            if made and not ours:
                self._leave_tables(made, metadata, alembic_config, keep, reuse, use_existing)

    def _leave_tables(
        self,
        made: set[str],
        metadata: MetaData | None,
        alembic_config: str | Path | None,
        keep: bool,
        reuse: bool,
        use_existing: bool,
    ) -> None:
        """Drop or keep the tables the run made in a database dbscope did not make, where
        nothing marks them as dbscope's: a run that keeps them says what the next needs."""
        listed = ", ".join(sorted(made))
        next_run = (
            ""
            if use_existing
            else f"; the next run cannot tell them from anyone else's in {self.label}, which "
            f"dbscope did not make, and runs on them only with {self.names.use_existing_tables}"
        )
        if metadata is None or alembic_config is not None:
            # A downgrade to base would drop tables this run did not make.
            self.say(f"kept the tables the migrations made: {listed}{next_run}")
        elif keep or (reuse and use_existing):
            self.say(
                f"kept the tables {listed} ({self.names.keep if keep else self.names.reuse})"
                f"{next_run}"
            )
        else:
            tables = [table for key, table in metadata.tables.items() if key in made]
            self._on_connection(lambda connection: metadata.drop_all(connection, tables=tables))
            if reuse:
                self.say(
                    f"dropped the tables {listed} all the same ({self.names.reuse}): in "
                    f"{self.label}, which dbscope did not make, the next run could not tell them "
                    f"from anyone else's; add {self.names.use_existing_tables} to both runs"
                )

    def _refusal(self, found: list[str]) -> str:
        # The mark is on the databases dbscope makes: in another, nothing tells the tables an
        # earlier run kept (reuse, keep) from anyone else's.
        return (
            f"the test database {self.label} already has the app's tables {', '.join(found)}, "
            "and dbscope did not make that database, so it cannot tell them from anyone "
            "else's (an earlier run's kept tables included); the tests would read and write "
            f"their rows. Drop those tables (or the database), or point {self.names.url} "
            f"elsewhere; or, to run on them all the same, pass "
            f"{self.names.use_existing_tables}: dbscope never drops a table it did not make."
        )

    def _table_names(self, metadata: MetaData | None) -> set[str]:
        """Every table in the schemas the app uses, as MetaData keys them."""
        schemas: set[str | None] = {None}
        if metadata is not None:
            schemas = {table.schema for table in metadata.tables.values()}
        return self._on_connection(lambda connection: table_names(connection, schemas))

    def _on_connection(self, work: Callable[[Connection], T]) -> T:
        return on_connection(self.url, work, pgbouncer=self.pgbouncer)

    @property
    def _maintenance(self) -> Callable[[URL], AbstractAsyncContextManager[AsyncConnection]]:
        return functools.partial(maintenance_connection, pgbouncer=self.pgbouncer)
