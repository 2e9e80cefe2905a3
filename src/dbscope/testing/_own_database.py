"""The test run's own database, named after the one given, and the app's tables in it.

A run never touches the database it is given: as pytest-django does, it makes another one
beside it for the tests, marked as dbscope's, and drops it at the end. What it finds under
that name, and the tables in it, decide what it does (docs/testing.md, "The test
database"). Each server's way of making, marking, finding and dropping a database is in
``dbscope._dialects``, the one private name this package uses: the rules of a server live
in one place.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import Connection, MetaData, inspect
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateSchema

from dbscope import ConfigurationError, Database, DbscopeError, _dialects
from dbscope.testing._isolation import (
    NOTHING_TO_CREATE,
    create_tables,
    in_new_loop,
    on_connection,
)

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
) -> Iterator[str]:
    """Make a database for the run beside the one ``url`` names, and drop it at the end.

    It is ``<name>_test`` on ``url``'s server (``<stem>_test.db`` beside a SQLite file),
    made with dbscope's mark, and has the tables of ``metadata`` or ``alembic_config``
    (:func:`own_tables`). One that an earlier run of dbscope left is made anew, or reused
    with ``reuse``; one someone else made is used as it is and never dropped. Synchronous:
    call it with or without a running loop.

    Args:
        url: names the database to name the run's after; that one is never touched.
        metadata, alembic_config, use_existing_tables, report, names: as for
            :func:`own_tables`.
        reuse: keep the database at the end, and reuse the one an earlier run kept.
        keep: keep the database at the end (the next run without ``reuse`` makes it anew).

    Yields:
        The URL of the run's database, its password included, to connect to.

    Raises:
        ConfigurationError: the URL is invalid.
        DatabaseSetupError: no database can be named after the URL, the server refuses to
            make or drop it, or :func:`own_tables` refuses its tables.
    """
    names, say = names or OptionNames(), report or _log.info
    target, rules = _named_after(url, names)
    label, rendered = _label(target), target.render_as_string(hide_password=False)
    found = in_new_loop(lambda: rules.database_presence(target, _maintenance))
    if found == "unmarked":
        say(
            f"the test database {label} exists and dbscope did not make it: the tests run in "
            "it, and dbscope drops neither it nor any table it did not make"
        )
    elif found == "marked" and reuse:
        say(f"reusing the test database {label}, kept by an earlier run ({names.reuse})")
    else:
        if found == "marked":
            _drop(target, rules, names, close_sessions=False)
            say(f"dropped the test database {label}, left by an earlier run, to make it anew")
        name = target.database or ""
        advice = f"{rules.create_advice(name)}, or create {name!r} yourself and run with "
        with _refusals(target, "create it: " + advice + names.reuse):
            in_new_loop(lambda: rules.create_database(target, _maintenance))
    ours = found != "unmarked"
    tables = _Tables(rendered, label, rules, metadata, alembic_config, names)
    try:
        with tables.made(ours=ours, use_existing=use_existing_tables, keep=reuse or keep, say=say):
            yield rendered
    finally:
        if ours and (reuse or keep):
            say(f"kept the test database {label} ({names.reuse if reuse else names.keep})")
        elif ours:  # what sessions remain are this run's own, left open by its tests
            _drop(target, rules, names, close_sessions=True)


@contextlib.contextmanager
def own_tables(
    url: str | URL,
    *,
    metadata: MetaData | None = None,
    alembic_config: str | Path | None = None,
    keep: bool = False,
    use_existing_tables: bool = False,
    report: Callable[[str], None] | None = None,
    names: OptionNames | None = None,
) -> Iterator[None]:
    """Make the app's tables in the database at ``url``, and drop them at the end.

    For a database you made yourself (a container's, say); :func:`own_database` calls it
    for its own. It makes the tables that are missing (:func:`create_tables`). In a database
    dbscope did not make, it refuses the app's tables already there (with migrations alone:
    any table): the tests would read and write their rows.

    Args:
        url: the database; in one dbscope made, the tables go with the database, and on
            PostgreSQL the schemas of ``metadata`` are made there too.
        metadata, alembic_config: the tables, as for :func:`create_tables`.
        keep: keep the tables at the end. Those made by migrations are always kept: a
            downgrade could drop tables the run did not make.
        use_existing_tables: run on the app's tables in a database dbscope did not make,
            instead of refusing to; they are never dropped.
        report: receives a line for each thing worth knowing that the run does (tables
            kept, a database reused or made anew); default: the ``dbscope`` logger, at INFO.
        names: how messages name the URL and the options: :class:`OptionNames`.

    Raises:
        ConfigurationError: neither ``metadata`` nor ``alembic_config`` is given.
        DatabaseSetupError: the database has the app's tables and dbscope did not make it.
    """
    if metadata is None and alembic_config is None:
        raise ConfigurationError(NOTHING_TO_CREATE)
    resolved = Database(url)
    rules = _dialects.backend(resolved.url.get_backend_name())
    ours = rules in _dialects.BACKENDS and not resolved.settings.is_memory
    if ours:
        ours = in_new_loop(lambda: rules.database_presence(resolved.url, _maintenance)) == "marked"
    tables = _Tables(
        url, _label(resolved.url), rules, metadata, alembic_config, names or OptionNames()
    )
    say = report or _log.info
    with tables.made(ours=ours, use_existing=use_existing_tables, keep=keep, say=say):
        yield


def _named_after(url: str | URL, names: OptionNames) -> tuple[URL, _dialects.Backend]:
    """The database named after ``url``'s, its name followed by ``_test``, and its rules."""
    given = Database(url)
    resolved = given.url
    rules = _dialects.backend(resolved.get_backend_name())
    if given.settings.is_memory:
        message = (
            f"{names.url} names an in-memory SQLite database, but the tests run in a database "
            f"file of their own, named after the one {names.url} names: name a file, e.g. "
            "sqlite+aiosqlite:///test.db (the tests then run in test_test.db)."
        )
    elif rules not in _dialects.BACKENDS:
        *others, last = (known.title for known in _dialects.BACKENDS)
        message = (
            f"dbscope makes its test database on {', '.join(others)} and {last}, not on "
            f"{resolved.get_backend_name()!r}: point {names.url} at one of those."
        )
    elif not resolved.database:
        message = (
            f"{names.url} {resolved!r} names no database, and the tests run in a database of "
            "their own named after it: add the database's name to the URL, e.g. .../app (the "
            "tests then run in app_test)."
        )
    elif _fits(name := rules.database_named(resolved, SUFFIX).database or "", rules):
        return rules.database_named(resolved, SUFFIX), rules
    else:
        limit, unit = rules.name_limit or (0, "")
        message = (
            f"The test database's name {name!r} (the name in {names.url}, then {SUFFIX!r}) is "
            f"longer than the {limit} {unit} {rules.name} allows: name a shorter database in "
            f"{names.url}."
        )
    raise DatabaseSetupError(message)


def _fits(name: str, rules: _dialects.Backend) -> bool:
    """Whether the server keeps the database name ``name`` whole."""
    if rules.name_limit is None:
        return True
    limit, unit = rules.name_limit
    return len(name.encode() if unit == "bytes" else name) <= limit


def _drop(
    target: URL, rules: _dialects.Backend, names: OptionNames, *, close_sessions: bool
) -> None:
    """Drop the run's database; ``close_sessions``: even while sessions use it."""
    hint = "drop it by hand"
    if not close_sessions:
        hint = (
            "if another test run uses it, give each run a database of its own "
            f"({names.url}); if none does, drop it by hand"
        )
    with _refusals(target, "drop it: " + hint):
        drop = rules.drop_database
        in_new_loop(lambda: drop(target, _maintenance, close_sessions=close_sessions))


@contextlib.contextmanager
def _refusals(target: URL, failed: str) -> Iterator[None]:
    try:
        yield
    except _dialects.DatabaseRefused as error:
        message = f"the test database {target.database!r}: {error}; could not {failed}."
        raise DatabaseSetupError(message) from None


def _label(url: URL) -> str:
    """The database and its server (or the SQLite file), for messages: no user, no password."""
    if _dialects.backend(url.get_backend_name()).default_port is None:  # a file
        return repr(url.database)
    server = f"{url.host}:{url.port}" if url.port else (url.host or "the local server")
    return f"{url.database!r} on {server}"


@contextlib.asynccontextmanager
async def _maintenance(url: URL) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection to the server, for making and dropping databases."""
    maintenance = Database(url, poolclass=NullPool, pool_pre_ping=False)
    async with maintenance, maintenance.engine.connect() as connection:
        yield await connection.execution_options(isolation_level="AUTOCOMMIT")


@dataclass(frozen=True)
class _Tables:
    """The app's tables, as ``metadata`` or the migrations define them, in the database."""

    url: str | URL
    label: str
    rules: _dialects.Backend
    metadata: MetaData | None
    alembic_config: str | Path | None
    names: OptionNames

    @contextlib.contextmanager
    def made(
        self, *, ours: bool, use_existing: bool, keep: bool, say: Callable[[str], None]
    ) -> Iterator[None]:
        """Make the tables, if any; drop those made at the end, unless the database is
        dbscope's (``ours``: they go with it) or ``keep``."""
        metadata = self.metadata
        if metadata is None and self.alembic_config is None:
            yield
            return
        before = self._names()
        existing = sorted(before if metadata is None else before & set(metadata.tables))
        if existing and not (ours or use_existing):
            raise DatabaseSetupError(self._refusal(existing))
        if ours and metadata is not None:
            schemas = self.rules.schemas_to_create(metadata)
            on_connection(self.url, lambda connection: _create_schemas(connection, schemas))
        create_tables(self.url, metadata=metadata, alembic_config=self.alembic_config)
        made = self._names() - before
        try:
            yield
        finally:
            if not (ours or keep):
                self._drop(made, say)

    def _drop(self, made: set[str], say: Callable[[str], None]) -> None:
        metadata = self.metadata
        if self.alembic_config is not None or metadata is None:
            # A downgrade to base would drop tables this run did not make.
            if made:
                say(f"kept the tables the migrations made: {', '.join(sorted(made))}")
            return
        tables = [table for key, table in metadata.tables.items() if key in made]
        if tables:
            on_connection(self.url, lambda connection: metadata.drop_all(connection, tables=tables))

    def _refusal(self, found: list[str]) -> str:
        names = self.names
        return (
            f"the test database {self.label} already has the app's tables {', '.join(found)}, "
            "which dbscope did not make; the tests would read and write their rows. Drop those "
            f"tables (or the database), or point {names.url} elsewhere; or, to run on them all "
            f"the same, pass {names.use_existing_tables}: dbscope never drops a table it did "
            "not make."
        )

    def _names(self) -> set[str]:
        """Every table of the database in the schemas the app uses, as MetaData keys them."""
        wanted: set[str | None] = {None}
        if self.metadata is not None:
            wanted = {table.schema for table in self.metadata.tables.values()}
        return on_connection(self.url, lambda connection: _table_names(connection, wanted))


def _table_names(connection: Connection, schemas: set[str | None]) -> set[str]:
    inspector = inspect(connection)
    known = set(inspector.get_schema_names())
    names: set[str] = set()
    for schema in schemas:
        if schema is None:
            names.update(inspector.get_table_names())
        elif schema in known:
            names.update(f"{schema}.{name}" for name in inspector.get_table_names(schema))
    return names


def _create_schemas(connection: Connection, schemas: list[str]) -> None:
    for schema in schemas:
        connection.execute(CreateSchema(schema, if_not_exists=True))
