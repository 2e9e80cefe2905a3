"""Making, finding and removing the run's own database, on each kind of server.

- PostgreSQL: ``CREATE DATABASE`` and ``DROP DATABASE`` through a maintenance connection to
  the ``postgres`` database, as neither may run on a connection to the database itself;
- MariaDB/MySQL: the same statements on a connection that names no database;
- SQLite: a file, made by opening it and removed with its ``-wal``/``-shm``/``-journal``
  companions.

A database made here carries a mark, so that a later run can tell a database left by an
earlier run of dbscope (which it may drop) from one someone else made under the same name
(which it must not): a comment on the database (PostgreSQL; MariaDB 10.5 and later), the
``application_id`` in the header of a SQLite file. MySQL has no comment on databases, so a
database there is never recognised as left by dbscope. The mark is not a table, so the app
and its migrations see nothing of it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import NullPool

from dbscope import Database
from dbscope._pytest_plugin._reporting import SetupError

T = TypeVar("T")

MARK: Final = "dbscope test database"
# "dbsc": what dbscope writes in the application_id of the SQLite files it makes.
SQLITE_MARK: Final = 0x64627363
SQLITE_COMPANIONS: Final = ("", "-wal", "-shm", "-journal")


class Presence(enum.Enum):
    """What the server holds under the run database's name."""

    ABSENT = "absent"
    MARKED = "made by dbscope"
    UNMARKED = "made by someone else"


class Server(Protocol):
    """The operations on the run's own database that differ between servers."""

    def presence(self) -> Presence:
        """Whether the database exists, and whether dbscope made it."""

    def create(self) -> None:
        """Make the database, empty, with dbscope's mark."""

    def drop(self, *, close_sessions: bool) -> None:
        """Remove the database, if it exists; ``close_sessions``: even while others use it."""


def server_for(url: URL) -> Server:
    """The operations for the database ``url`` names (dbscope's resolved URL)."""
    backend = url.get_backend_name()
    if backend == "sqlite":
        return SqliteFile(Path(url.database or ""))
    name = url.database or ""
    if backend == "postgresql":
        return ServerDatabase(url.set(database="postgres"), name)
    # URL.set() leaves a field alone when given None; a NamedTuple's _replace clears it.
    return ServerDatabase(url._replace(database=None), name)


@dataclass(frozen=True)
class ServerDatabase:
    """A database on a PostgreSQL or MariaDB/MySQL server, reached through ``admin_url``."""

    admin_url: URL
    name: str

    def presence(self) -> Presence:
        """Whether the database exists, and whether its comment is dbscope's mark."""
        return in_new_loop(self._presence)

    def create(self) -> None:
        """CREATE DATABASE, then mark it."""
        in_new_loop(self._create)

    def drop(self, *, close_sessions: bool) -> None:
        """DROP DATABASE; with ``close_sessions``, ending those left (PostgreSQL 13 and later).

        Without it, a database in use (by another run, say) is not dropped: PostgreSQL
        refuses at once, MariaDB/MySQL after waiting 10 s for its locks.
        """
        in_new_loop(lambda: self._drop(close_sessions))

    async def _presence(self) -> Presence:
        async with self._admin() as connection:
            if _is_postgres(connection):
                query = "SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                query += "WHERE datname = :name"
            elif _has_schema_comments(connection):
                query = "SELECT schema_comment FROM information_schema.schemata "
                query += "WHERE schema_name = :name"
            else:
                query = "SELECT NULL FROM information_schema.schemata WHERE schema_name = :name"
            row = (await connection.execute(text(query), {"name": self.name})).first()
        if row is None:
            return Presence.ABSENT
        return Presence.MARKED if row[0] == MARK else Presence.UNMARKED

    async def _create(self) -> None:
        async with self._admin() as connection:
            quoted = connection.dialect.identifier_preparer.quote_identifier(self.name)
            if _is_postgres(connection):
                statements = [f"CREATE DATABASE {quoted}"]
                statements.append(f"COMMENT ON DATABASE {quoted} IS '{MARK}'")
            elif _has_schema_comments(connection):
                statements = [f"CREATE DATABASE {quoted} COMMENT '{MARK}'"]
            else:
                statements = [f"CREATE DATABASE {quoted}"]
            for statement in statements:
                await self._run(connection, statement, f"create it: {self._create_hint}")

    async def _drop(self, close_sessions: bool) -> None:
        async with self._admin() as connection:
            quoted = connection.dialect.identifier_preparer.quote_identifier(self.name)
            statement = f"DROP DATABASE IF EXISTS {quoted}"
            if not _is_postgres(connection):
                # MySQL waits a year by default for the locks another session holds.
                await connection.execute(text("SET SESSION lock_wait_timeout = 10"))
            elif close_sessions and _version(connection) >= (13,):
                statement += " WITH (FORCE)"
            hint = "drop it by hand" if close_sessions else self._in_use_hint
            await self._run(connection, statement, f"drop it: {hint}")

    @property
    def _create_hint(self) -> str:
        return (
            "the user needs the right to create databases (PostgreSQL: ALTER ROLE ... "
            f"CREATEDB; MySQL: GRANT ALL ON `{self.name}`.*), or create {self.name!r} "
            "yourself and run with --dbscope-reuse-db"
        )

    @property
    def _in_use_hint(self) -> str:
        return (
            "if another test run uses it, give each run a database of its own (dbscope_url); "
            "if none does, drop it by hand"
        )

    async def _run(self, connection: AsyncConnection, statement: str, failed: str) -> None:
        try:
            await connection.execute(text(statement))
        except DBAPIError as error:
            # The driver's own words name the privilege or the lock at fault.
            message = f"the test database {self.name!r}: {error.orig}; could not {failed}."
            raise SetupError(message) from None

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[AsyncConnection]:
        """An autocommit connection for the server's maintenance, checked by dbscope."""
        maintenance = Database(self.admin_url, poolclass=NullPool, pool_pre_ping=False)
        async with maintenance, maintenance.engine.connect() as connection:
            yield await connection.execution_options(isolation_level="AUTOCOMMIT")


@dataclass(frozen=True)
class SqliteFile:
    """A SQLite database file."""

    path: Path

    def presence(self) -> Presence:
        """Whether the file exists, and whether its header carries dbscope's mark."""
        if not self.path.exists():
            return Presence.ABSENT
        try:
            with contextlib.closing(sqlite3.connect(self.path)) as connection:
                (application_id,) = connection.execute("PRAGMA application_id").fetchone()
        except sqlite3.DatabaseError:  # a file that is not a SQLite database
            return Presence.UNMARKED
        return Presence.MARKED if application_id == SQLITE_MARK else Presence.UNMARKED

    def create(self) -> None:
        """Make the file, with dbscope's mark in its header."""
        try:
            with contextlib.closing(sqlite3.connect(self.path)) as connection:
                connection.execute(f"PRAGMA application_id = {SQLITE_MARK}")
                connection.commit()
        except sqlite3.Error as error:
            message = f"could not create the test database file {str(self.path)!r}: {error}."
            raise SetupError(message) from None

    def drop(self, *, close_sessions: bool) -> None:
        """Remove the file and the journal files beside it (other connections keep theirs)."""
        for suffix in SQLITE_COMPANIONS:
            self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)


def _is_postgres(connection: AsyncConnection) -> bool:
    return connection.dialect.name == "postgresql"


def _version(connection: AsyncConnection) -> tuple[int, ...]:
    info = connection.dialect.server_version_info or ()
    return tuple(part for part in info if isinstance(part, int))


def _has_schema_comments(connection: AsyncConnection) -> bool:
    """MariaDB 10.5 and later keep a comment on a database; MySQL does not."""
    is_mariadb = bool(getattr(connection.dialect, "is_mariadb", False))
    return is_mariadb and _version(connection) >= (10, 5)


def in_new_loop(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``work()`` in a new thread with an event loop of its own.

    The fixtures that call this may run while a test loop is set but not running, which a
    loop of ours in this thread would replace.
    """
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dbscope-setup") as pool:
        return pool.submit(lambda: asyncio.run(work())).result()
