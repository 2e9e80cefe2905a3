"""The two records every database is described by: its backend, and each of its drivers.

A :class:`Backend` holds what one server speaks: which statements set up a unit's transaction,
which error codes mean a lost connection, a refusal, a timeout, a conflict or a violated
constraint, what its engines need at start-up, and how a database of its own is made, found
and dropped for a test run. Each of its drivers is a :class:`~dbscope._dialects.driver.Driver`
(driver.py). Nothing outside ``dbscope._dialects`` writes a backend or driver name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from sqlalchemy import MetaData, text
from sqlalchemy.engine import URL, Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.util import immutabledict

from dbscope._dialects.driver import Driver
from dbscope._dialects.marks import Found, read_mark
from dbscope._dialects.replication import Replication, Standbys

# What an error means, read from the database's own code (never from the exception class,
# which differs between drivers for the same failure):
#   lost        the connection is gone or the server cannot serve now; it may heal by itself
#   refused     wrong user, password or database, a missing privilege: it will not heal
#   timeout     a statement ran past the unit's statement_timeout and was cancelled
#   conflict    a serialization failure or deadlock: running the unit again may succeed
#   lock_wait   a lock wait timed out (retried only on request)
#   constraint  a unique, foreign key, check or exclusion constraint was violated
#   read_only   a write refused because the transaction is read-only: the unit's own doing in
#               a read-only unit; in one that writes, a server that is no longer the primary
ErrorKind = Literal[
    "lost", "refused", "timeout", "conflict", "lock_wait", "constraint", "read_only"
]
# What the server rolled back when it raised an error in a transaction, beside the statement:
#   to_savepoint  up to the innermost savepoint open then, or the whole transaction outside any
#   transaction   the whole transaction, its savepoints with it
#   earlier       nothing more: the error says an earlier error did (PostgreSQL's 25P02)
RolledBack = Literal["to_savepoint", "transaction", "earlier"]

# Opens an autocommit connection to the server of a URL; given by the caller (a leaf here).
Connect = Callable[[URL], AbstractAsyncContextManager[AsyncConnection]]
# The execution option on the statements dbscope sends of its own accord in a unit (SET LOCAL,
# SET TRANSACTION READ ONLY, SQLite's BEGIN, a replica's replay check...): query counts
# (dbscope.testing) leave them out by this mark, not by guessing from the text.
OWN_STATEMENT: Final = "dbscope_own_statement"
OWN: Final = immutabledict({OWN_STATEMENT: True})
NO_PARAMETERS: Final = immutabledict({"no_parameters": True})


class DatabaseRefused(Exception):
    """The server (or the file system) would not make or drop a database; its own words."""


@dataclass(frozen=True)
class Begin:
    """What a unit asks of each transaction it begins."""

    read_only: bool = False
    statement_timeout: float | None = None
    schema: str | None = None
    synchronous_commit: str | None = None


@dataclass(frozen=True)
class Client:
    """How to start a database's own command-line client on a URL (``dbscope shell``).

    Attributes:
        programs: the client's names, the first found on the PATH is run.
        arguments: its arguments: where the database is, never the password.
        environment: variables to add for it: the password, which a process list would
            show on a command line.
        install: how to install it, for when none of ``programs`` is found.
    """

    programs: tuple[str, ...]
    arguments: tuple[str, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    install: str = ""


@dataclass(frozen=True)
class Backend:
    """One database server's rules. Subclassed once per backend; instances are constants.

    Attributes:
        name: SQLAlchemy's backend name.
        aliases: other names URLs use for it: SQLAlchemy's own (``mariadb``), kept in the URL,
            and others (``postgres``, from hosting platforms), rewritten to ``name``.
        drivers: its async drivers, in order of preference when a URL names none.
        has_schemas: whether a unit can target a schema (``search_path``).
        has_statement_timeout: whether a unit can bound its statements' time.
        max_statement_timeout: the longest ``statement_timeout`` in seconds that the server's
            own setting accepts; None where there is none to bound.
        has_synchronous_commit: whether a unit can choose what its commit waits for
            (PostgreSQL's ``synchronous_commit``).
        has_replicas: whether read-only units can be routed to its streaming replicas, by the
            position each has replayed (``write_position`` and the readings below).
        recycle: seconds after which a pooled connection is replaced by default; -1: never.
        pinged: whether idle connections are checked before use by default.
        read_only_view, writer_view: execution options (set to True) of a read-only unit (a
            BEGIN READ ONLY, one statement less) and of one that may write (BEGIN IMMEDIATE).
        default_port: the server's port when a URL names none; None for a database that is a
            file, with no server to reach.
        locks_migrations_in_transaction: whether :meth:`lock_migrations` runs in the
            migrations' own transaction, whose end lets the lock go (else before it, for the
            session, until :meth:`unlock_migrations`).
        commits_ddl: whether each DDL statement commits by itself: the migrations then run a
            transaction per revision, each recorded in the version table as it ends.
        connected_refuses_drop: whether a session connected to a database makes the server
            refuse to drop it (unless told to end the sessions): a test run keeps one open to
            its own database, so that another run finds it in use instead of dropping it.
        schema_advice: what to do instead, said to those who ask for a schema here.
        title: how people call it, in messages.
        fingerprint_digits: how many hex digits of the fingerprint of a test run's tables
            its database's mark keeps (:meth:`mark_tables_statements`).
    """

    name: str
    aliases: tuple[str, ...]
    drivers: Mapping[str, Driver] = field(default_factory=dict)
    has_schemas: bool = False
    has_statement_timeout: bool = False
    max_statement_timeout: float | None = None
    has_synchronous_commit: bool = False
    has_replicas: bool = False
    recycle: int = -1
    pinged: bool = True
    read_only_view: tuple[str, ...] = ()
    writer_view: tuple[str, ...] = ()
    default_port: int | None = None
    locks_migrations_in_transaction: bool = False
    commits_ddl: bool = False
    connected_refuses_drop: bool = False
    schema_advice: str = "."
    title: str = ""
    fingerprint_digits: int = 16

    def is_memory(self, url: URL) -> bool:
        """Whether ``url`` names a database that lives in one connection's memory."""
        return False

    def primary_url_problem(self, url: URL) -> str | None:
        """Why ``url``, a Database's own URL (not a replica's), may reach a server that takes
        no writes, with the fix; None when it names one server, or says which it wants."""
        return None

    def probe_url(self, url: URL) -> URL | None:
        """Where a health probe opens a connection of its own to ``url``'s database; None
        when no other connection reaches it."""
        return url

    def begin(self, connection: Connection, wanted: Begin) -> None:
        """Apply ``wanted`` to the transaction ``connection`` has just begun."""

    def settings_before(
        self, connection: Connection, wanted: Begin, *, named: bool
    ) -> Mapping[str, str]:
        """What :meth:`begin` with ``wanted`` (and ``named``: :meth:`name_transaction`) is
        about to change in the transaction of ``connection``, as it is now: read at the start
        of a unit that is a savepoint of a test's transaction, for :meth:`put_back` to restore
        at its end. By default nothing is read (nothing to restore, or restored otherwise)."""
        return {}

    def put_back(self, connection: Connection, before: Mapping[str, str]) -> None:
        """Undo what :meth:`begin` and :meth:`name_transaction` did, at the end of a unit
        that was a savepoint of a test's transaction, where ``SET LOCAL`` outlives a released
        savepoint and the connection never returns to the pool to be reset: ``before`` is
        what :meth:`settings_before` read as the unit began (or a ``use_schema()`` of it)."""

    def name_transaction(self, connection: Connection, name: str) -> None:
        """Show ``name`` (a request id) in the server's list of sessions until the transaction
        ``connection`` has just begun ends; by default nothing."""

    def schema_statement(self, dialect: Dialect, schema: str | None) -> str:
        """The statement that makes the rest of the transaction target ``schema``."""
        message = f"{self.name} has no schemas to switch between."
        raise NotImplementedError(message)

    def configure(self, engine: AsyncEngine, *, memory: bool) -> None:
        """Install the engine-wide event listeners this backend needs."""

    def set_up_sessions(self, engine: AsyncEngine) -> None:
        """Install the listeners that give each new connection its session-level settings.

        Left out behind PgBouncer in transaction mode, where a session's settings would stay
        with the server connection that ran them, not with the client."""

    def defer_begins(self, engine: AsyncEngine) -> None:
        """Let each unit's transaction begin at its first statement that is not a plain read,
        where the backend and driver can; by default the transaction begins as ever."""

    async def idle_timeout(self, connection: Any) -> int | None:
        """Seconds after which the server closes an idle connection, if it says so."""
        return None

    def error_kind(self, orig: BaseException | None) -> ErrorKind | None:
        """What the driver error ``orig`` means, from this backend's codes."""
        return None

    def rolled_back_by(self, orig: BaseException | None) -> RolledBack | None:
        """What the server rolled back when it raised the driver error ``orig`` in a
        transaction; None: the statement alone, and the transaction goes on."""
        return None

    def failure_undone(self, connection: Connection) -> bool:
        """Whether the transaction of ``connection``, which an error rolled back (to a
        savepoint, or whole), is whole again: rolled back by the application to a savepoint
        of its own. By default, never known."""
        return False

    def begin_again_if_ended(self, dbapi_connection: Any) -> bool:
        """Begin a new transaction on ``dbapi_connection`` if the server ended its own at the
        error just raised, though no rule of ``rolled_back_by`` says so, so that the
        statements that follow cannot commit one by one; whether it did. By default never
        (on MySQL the driver's state says none after any DDL, which commits by itself)."""
        return False

    def error_code(self, orig: BaseException | None) -> str | None:
        """The error's code as this backend names it (a SQLSTATE, a MySQL error number)."""
        return None

    def at_connection_limit(self, orig: BaseException | None) -> bool:
        """Whether ``orig``, raised opening a connection, is the server refusing it for a
        connection limit (its own, a user's, a database's); by default never."""
        return False

    def lost_because(self, orig: BaseException | None) -> str | None:
        """What a connection error ``orig`` (an error_kind of "lost") says happened, when
        more is known than that the connection was lost (a pooler in front of the server
        that gave up waiting for it); None for a plain lost connection."""
        return None

    def setup_advice(self, orig: BaseException | None) -> str | None:
        """The fix, when the driver error ``orig`` says the server was reached but the setup
        in front of it does not fit the connection's settings (a pooler's mode, say)."""
        return None

    def conflict_name(self, orig: BaseException | None) -> str:
        """How the conflict ``orig`` (of kind ``conflict``) is named in logs and messages."""
        return "serialization failure"

    def constraint_name(self, orig: BaseException | None) -> str | None:
        """The name of the constraint a violation error names, if the driver tells it."""
        return None

    # -- a database of its own for a test run ---------------------------------------------
    # On a server: statements on a maintenance connection (the server's, never the database's
    # own, which CREATE and DROP DATABASE may not use); SQLite overrides them with file work.

    def database_named(self, url: URL, suffix: str) -> URL:
        """``url`` with ``suffix`` added to its database's name."""
        return url.set(database=f"{url.database}{suffix}")

    def too_long(self, name: str) -> str | None:
        """The limit the database name ``name`` is over (``63 bytes``); None if it is kept."""
        return None

    def schemas_to_create(self, metadata: MetaData) -> list[str]:
        """The schemas of ``metadata``'s tables that a new database lacks and may hold."""
        if not self.has_schemas:  # elsewhere a schema is a database of its own, or nothing
            return []
        return sorted({table.schema for table in metadata.tables.values() if table.schema})

    def create_advice(self, name: str) -> str:
        """What the user needs to create the database ``name``."""
        return "the user needs the right to create databases"

    def maintenance_url(self, url: URL) -> URL:
        """Where to connect to make, find or drop ``url``'s database: by default, no database."""
        # URL.set() leaves a field alone when given None; a NamedTuple's _replace clears it.
        return url._replace(database=None)

    async def database_presence(self, url: URL, connect: Connect) -> Found:
        """Whether ``url``'s database exists, whether it bears dbscope's mark, and the
        fingerprint of its tables that the mark carries; one query, the mark's own."""
        async with connect(self.maintenance_url(url)) as connection:
            query = text(self.presence_query(connection))
            row = (await connection.execute(query, {"name": url.database})).first()
        return Found("absent") if row is None else read_mark(row[0])

    def mark_tables(self, connection: Connection, fingerprint: str) -> None:
        """Keep ``fingerprint``, of the tables a test run made from its metadata, with the mark
        of ``connection``'s database (:meth:`mark_tables_statements`)."""
        for statement in self.mark_tables_statements(connection, fingerprint):
            connection.exec_driver_sql(statement, execution_options=NO_PARAMETERS)

    def mark_tables_statements(self, connection: Connection, fingerprint: str) -> list[str]:
        """The statements that keep ``fingerprint`` with the mark of ``connection``'s
        database; by default none (a database that carries no mark)."""
        return []

    async def create_database(self, url: URL, connect: Connect) -> None:
        """Make ``url``'s database, empty, with dbscope's mark; DatabaseRefused if refused."""
        async with connect(self.maintenance_url(url)) as connection:
            await _execute(connection, self.create_statements(connection, _quoted(connection, url)))

    async def drop_database(self, url: URL, connect: Connect, *, close_sessions: bool) -> None:
        """Remove ``url``'s database if it exists; ``close_sessions``: even while in use.

        Without ``close_sessions`` a database in use is not dropped: DatabaseRefused.
        """
        async with connect(self.maintenance_url(url)) as connection:
            name = _quoted(connection, url)
            statements = self.drop_statements(connection, name, close_sessions=close_sessions)
            await _execute(connection, statements)

    # What a server says for each of them; GENERIC knows none (dbscope.testing refuses it).

    def presence_query(self, connection: AsyncConnection) -> str:
        """A query of the mark (a comment) on the database named ``:name``; no row if none."""
        raise NotImplementedError

    def create_statements(self, connection: AsyncConnection, name: str) -> list[str]:
        """The statements that make the database ``name`` (quoted) with dbscope's mark."""
        raise NotImplementedError

    def drop_statements(
        self, connection: AsyncConnection, name: str, *, close_sessions: bool
    ) -> list[str]:
        """The statements that drop the database ``name`` (quoted), if it exists."""
        raise NotImplementedError

    # -- operations ----------------------------------------------------------------------------

    def client(self, url: URL, schema: str | None = None) -> Client | None:
        """The command-line client for ``url``'s database, its statements targeting
        ``schema`` if given; None if dbscope knows none."""
        return None

    def lock_migrations(self, connection: Connection, name: str, seconds: float) -> bool | None:
        """Wait at most ``seconds`` for the lock ``name`` that keeps two migration runs on this
        database apart (see ``locks_migrations_in_transaction``; for a session, the caller
        ends the transaction the statements begin): True when had, False when the wait ran
        out, None when the server reported an error. By default there is none to take."""
        return True

    def unlock_migrations(self, connection: Connection, name: str) -> None:
        """Release what :meth:`lock_migrations` took, once the migrations' transaction ended."""

    # -- read replicas (where has_replicas) --------------------------------------------------

    def write_position(self, dbapi_connection: Any) -> int:
        """The server's position in its log now, read on a driver connection whose
        transaction has just committed, outside any transaction (called from a pool event)."""
        raise NotImplementedError

    async def log_position(self, connection: AsyncConnection) -> int:
        """The primary's position in its log now, as :meth:`write_position` reads it: no
        commit's position it gave before is further."""
        raise NotImplementedError

    async def replication(self, connection: AsyncConnection) -> Replication:
        """What the server says of its place in replication (see :class:`Replication`)."""
        raise NotImplementedError

    async def replayed(self, connection: AsyncConnection, position: int) -> bool:
        """Whether the replica on ``connection`` has replayed the log up to ``position``."""
        raise NotImplementedError

    async def standbys(self, connection: AsyncConnection) -> Standbys | None:
        """Whether commits wait for a synchronous standby; None where the question does not
        apply (a file, a server without synchronous replication)."""
        return None


async def _execute(connection: AsyncConnection, statements: list[str]) -> None:
    try:
        for statement in statements:
            # As written, with no parameters: through text(), a name's '%' (doubled for
            # psycopg and asyncmy) or ':x' (a parameter) made or dropped another database
            # than the one found and yielded.
            await connection.exec_driver_sql(statement, execution_options=NO_PARAMETERS)
    except DBAPIError as error:
        # The driver's own words name the privilege or the lock at fault.
        raise DatabaseRefused(str(error.orig)) from None


def _quoted(connection: AsyncConnection | Connection, url: URL) -> str:
    # The dialect's quotes, without quote_identifier()'s '%' doubling: sent as written.
    preparer = connection.dialect.identifier_preparer
    name = (url.database or "").replace(preparer.escape_quote, preparer.escape_to_quote)
    return f"{preparer.initial_quote}{name}{preparer.final_quote}"


def quoted_database(connection: Connection) -> str:
    """The name of ``connection``'s database, quoted, for statements sent as written."""
    return _quoted(connection, connection.engine.url)


def server_version(connection: AsyncConnection | Connection) -> tuple[int, ...]:
    """The server's version, as the dialect read it when connecting."""
    info = connection.dialect.server_version_info or ()
    return tuple(part for part in info if isinstance(part, int))
