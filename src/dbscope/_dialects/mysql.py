"""MariaDB's and MySQL's rules (their drivers' are in ``mysql_drivers.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, ExceptionContext
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from dbscope._dialects._base import (
    OWN,
    Backend,
    Begin,
    Client,
    Connect,
    ErrorKind,
    RolledBack,
    quoted_database,
    server_version,
)
from dbscope._dialects.marks import MARK, tables_mark
from dbscope._dialects.mysql_drivers import AIOMYSQL, ASYNCMY, error_number

# Client and server codes for a connection that is gone or cannot be had now: too many
# connections, server shutdown, can't connect, unknown host, server gone away, lost.
LOST: Final = frozenset({1040, 1053, 2002, 2003, 2005, 2006, 2013})
# Refusals no retry cures: access denied to a database, wrong user or password (with or
# without one), unknown database, a missing table, column or other privilege.
REFUSED: Final = frozenset({1044, 1045, 1049, 1142, 1143, 1227, 1698})
# A connection limit: max_connections, max_user_connections (1203, 1226), per hour (1226).
CONNECTION_LIMITS: Final = frozenset({1040, 1203, 1226})
DEADLOCK: Final = 1213
# A deadlock rolls back InnoDB's whole transaction, its savepoints with it: the ROLLBACK TO
# SAVEPOINT of a nested transaction then fails with this, which hides the deadlock.
SAVEPOINT_GONE: Final = 1305
LOCK_WAIT_TIMEOUT: Final = 1205
# MariaDB ER_STATEMENT_TIMEOUT, MySQL ER_QUERY_TIMEOUT.
TIMEOUTS: Final = frozenset({1969, 3024})
# Duplicate entry, a parent row in use, no parent row, a check constraint, a NULL refused.
NULL_REFUSED: Final = 1048
CONSTRAINTS: Final = frozenset({1062, 1451, 1452, 3819, 4025, NULL_REFUSED})
TIMEOUT_FLAG: Final = "dbscope.statement_timeout"  # on a connection's info, while in force
# The session's own value (a user's MAX_STATEMENT_TIME, an init_command's) is kept in a user
# variable and put back: DEFAULT would be the global one.
SET_STATEMENT_TIMEOUT: Final = (
    "SET @dbscope_statement_time = @@session.max_statement_time, "
    "SESSION max_statement_time = {seconds}"
)
RESET_STATEMENT_TIMEOUT: Final = "SET SESSION max_statement_time = @dbscope_statement_time"
# GET_LOCK's names are the server's, not a database's: the database's name goes in, the
# whole cut to the 64 characters MySQL allows.
LOCK_NAME: Final = "LEFT(CONCAT(:name, ' in ', IFNULL(DATABASE(), '')), 64)"


# The URL's TLS options (SQLAlchemy's MySQL dialects read them into the driver's ``ssl``)
# that MariaDB's client and MySQL's take alike, as --ssl-ca and so on. ssl_check_hostname is
# not carried over: the clients spell it differently (docs/cli.md).
SSL_OPTIONS: Final = ("ssl_ca", "ssl_cert", "ssl_key", "ssl_capath", "ssl_cipher")


class MySQL(Backend):
    """MariaDB/MySQL's rules: session variables put back on return, error numbers."""

    def begin(self, connection: Connection, wanted: Begin) -> None:
        if wanted.read_only and not connection.in_nested_transaction():
            # MariaDB/MySQL begin a transaction implicitly, at the first statement: this one,
            # sent before any, makes that transaction read-only. In a test's transaction (the
            # unit is a savepoint) it would outlive the unit, so there the unit only rolls back.
            connection.exec_driver_sql("SET TRANSACTION READ ONLY", execution_options=OWN)
        if wanted.statement_timeout is not None:
            # No SET LOCAL here: the session value is put back when the connection returns to
            # the pool (_reset_statement_timeout).
            seconds = max(1, round(wanted.statement_timeout * 1000)) / 1000
            if connection.info.get(TIMEOUT_FLAG):  # the session's own value is kept already
                statement = f"SET SESSION max_statement_time = {seconds}"
            else:
                statement = SET_STATEMENT_TIMEOUT.format(seconds=seconds)
            connection.exec_driver_sql(statement, execution_options=OWN)
            connection.info[TIMEOUT_FLAG] = True

    def put_back(self, connection: Connection, before: Mapping[str, str]) -> None:
        if connection.info.pop(TIMEOUT_FLAG, False):
            connection.exec_driver_sql(RESET_STATEMENT_TIMEOUT, execution_options=OWN)

    def configure(self, engine: AsyncEngine, *, memory: bool) -> None:
        event.listen(engine.sync_engine, "reset", _reset_statement_timeout)
        event.listen(engine.sync_engine, "handle_error", _constraint_as_integrity_error)

    def client(self, url: URL, schema: str | None = None) -> Client | None:
        arguments: list[str] = []
        for option, value in (
            ("--host", url.host),
            ("--socket", url.query.get("unix_socket")),
            ("--port", None if url.port is None else str(url.port)),
            ("--user", url.username),
            ("--database", url.database),
            # What a UTF-8 terminal types and shows, whatever the URL's charset (the driver's
            # own encoding): not the client's default utf8mb3, in which 4-byte characters show
            # as '?' and cannot be written, nor latin1, which would store them double-encoded.
            ("--default-character-set", "utf8mb4"),
            # The TLS options SQLAlchemy reads from the URL, under the names both clients take.
            *((f"--{name.replace('_', '-')}", url.query.get(name)) for name in SSL_OPTIONS),
        ):
            if isinstance(value, str) and value:
                arguments.append(f"{option}={value}")
        # MYSQL_PWD: read by MariaDB's client and MySQL's (deprecated there, still honoured).
        password = {} if url.password is None else {"MYSQL_PWD": str(url.password)}
        return Client(
            programs=("mariadb", "mysql"),
            arguments=tuple(arguments),
            environment=password,
            install="install MariaDB's or MySQL's client, e.g. apt install mariadb-client",
        )

    def lock_migrations(self, connection: Connection, name: str, seconds: float) -> bool | None:
        # The session's until RELEASE_LOCK; GET_LOCK answers 1 (had), 0 (the wait ran out) or
        # NULL (an error: the session killed, memory short).
        query = text(f"SELECT GET_LOCK({LOCK_NAME}, :seconds)")
        had = connection.execute(query, {"name": name, "seconds": seconds}).scalar()
        return None if had is None else bool(had)

    def unlock_migrations(self, connection: Connection, name: str) -> None:
        connection.execute(text(f"SELECT RELEASE_LOCK({LOCK_NAME})"), {"name": name})

    async def idle_timeout(self, connection: Any) -> int | None:
        result = await connection.exec_driver_sql("SELECT @@wait_timeout", execution_options=OWN)
        return int(result.scalar_one())

    def error_code(self, orig: BaseException | None) -> str | None:
        number = error_number(orig)
        return None if number is None else str(number)

    def at_connection_limit(self, orig: BaseException | None) -> bool:
        return error_number(orig) in CONNECTION_LIMITS

    def conflict_name(self, orig: BaseException | None) -> str:
        return "deadlock"  # InnoDB's only conflict code here (DEADLOCK)

    def error_kind(self, orig: BaseException | None) -> ErrorKind | None:
        # MySQL's SQLSTATEs are coarse (42000 for an unknown database and a syntax error
        # alike): the error number decides.
        number = error_number(orig)
        if number in LOST:
            return "lost"
        if number in REFUSED:
            return "refused"
        if number == DEADLOCK or (number == SAVEPOINT_GONE and _after_deadlock(orig)):
            return "conflict"
        if number == LOCK_WAIT_TIMEOUT:
            return "lock_wait"
        if number in TIMEOUTS:
            return "timeout"
        if number in CONSTRAINTS:
            return "constraint"
        return None

    def rolled_back_by(self, orig: BaseException | None) -> RolledBack | None:
        # InnoDB rolls back the whole transaction at a deadlock; the next statement begins
        # a new one. Other errors roll back their statement alone.
        return "transaction" if error_number(orig) == DEADLOCK else None

    def constraint_name(self, orig: BaseException | None) -> str | None:
        text = str(getattr(orig, "args", ("", ""))[-1])
        if text.endswith("'") and " for key '" in text:
            # "Duplicate entry '<the row's values>' for key '<name>'": the values may hold
            # the marker too, so the key is what follows its last one.
            return text.rpartition(" for key '")[2][:-1]
        if "CONSTRAINT `" in text:  # a foreign key or check, named before any value
            return text.split("CONSTRAINT `", 1)[1].split("`", 1)[0]
        if error_number(orig) == NULL_REFUSED and text.count("'") == 2:
            return f"{text.split(chr(39))[1]} NOT NULL"  # "Column '<name>' cannot be null"
        return None

    def too_long(self, name: str) -> str | None:
        return "64 characters" if len(name) > 64 else None

    def create_advice(self, name: str) -> str:
        return f"the user needs the right to create databases (GRANT ALL ON `{name}`.*)"

    def presence_query(self, connection: AsyncConnection) -> str:
        comment = "schema_comment" if _has_schema_comments(connection) else "NULL"
        return f"SELECT {comment} FROM information_schema.schemata WHERE schema_name = :name"

    def create_statements(self, connection: AsyncConnection, name: str) -> list[str]:
        mark = f" COMMENT '{MARK}'" if _has_schema_comments(connection) else ""
        return [f"CREATE DATABASE {name}{mark}"]

    def mark_tables_statements(self, connection: Connection, fingerprint: str) -> list[str]:
        if not _has_schema_comments(connection):  # MySQL: no mark to carry it
            return []
        return [
            f"ALTER DATABASE {quoted_database(connection)} COMMENT '{tables_mark(fingerprint)}'"
        ]

    async def drop_database(self, url: URL, connect: Connect, *, close_sessions: bool) -> None:
        if close_sessions:  # as PostgreSQL's DROP DATABASE ... WITH (FORCE)
            async with connect(self.maintenance_url(url)) as connection:
                await _end_sessions_in(connection, url.database or "")
        await super().drop_database(url, connect, close_sessions=close_sessions)

    def drop_statements(
        self, connection: AsyncConnection, name: str, *, close_sessions: bool
    ) -> list[str]:
        # A database in use waits for its locks: 10 s, not the default year, then is refused.
        return ["SET SESSION lock_wait_timeout = 10", f"DROP DATABASE IF EXISTS {name}"]


async def _end_sessions_in(connection: AsyncConnection, database: str) -> None:
    # A session left in a transaction in the database (a test's connection never closed)
    # holds locks that DROP DATABASE would wait for.
    found = await connection.execute(
        text(
            "SELECT id FROM information_schema.processlist "
            "WHERE db = :name AND id <> CONNECTION_ID()"
        ),
        {"name": database},
    )
    for session in found.scalars().all():
        with contextlib.suppress(DBAPIError):  # it ended meanwhile
            await connection.execute(text(f"KILL CONNECTION {int(session)}"))


def _has_schema_comments(connection: AsyncConnection | Connection) -> bool:
    """MariaDB 10.5+ keeps a comment on a database (dbscope's mark); MySQL does not."""
    is_mariadb = bool(getattr(connection.dialect, "is_mariadb", False))
    return is_mariadb and server_version(connection) >= (10, 5)


def _constraint_as_integrity_error(context: ExceptionContext) -> IntegrityError | None:
    # asyncmy raises a failed CHECK (MariaDB's 4025, MySQL's 3819) as an OperationalError:
    # the IntegrityError an endpoint catches for the other constraints, as every driver's is.
    error = context.sqlalchemy_exception
    if isinstance(error, IntegrityError) or not isinstance(error, DBAPIError):
        return None
    if error.orig is None or BACKEND.error_kind(error.orig) != "constraint":
        return None
    return IntegrityError(
        error.statement, error.params, error.orig, hide_parameters=error.hide_parameters
    )


def _after_deadlock(orig: BaseException | None) -> bool:
    """Whether a deadlock is among the errors ``orig`` was raised in the handling of."""
    cause = orig.__context__ if orig is not None else None
    for _ in range(4):  # the driver's error, SQLAlchemy's around it, and again
        if cause is None or error_number(getattr(cause, "orig", cause)) == DEADLOCK:
            return cause is not None
        cause = cause.__context__
    return False


def _reset_statement_timeout(
    dbapi_connection: Any, record: ConnectionPoolEntry, reset_state: Any
) -> None:
    # A unit's statement timeout is a session variable: put back before anyone else's use.
    if record.info.pop(TIMEOUT_FLAG, False):
        cursor = dbapi_connection.cursor()
        cursor.execute(RESET_STATEMENT_TIMEOUT)
        cursor.close()


# A MySQL wait_timeout of 8 hours is the server default; recycle well before it.
BACKEND: Final = MySQL(
    name="mysql",
    aliases=("mariadb",),
    drivers={"asyncmy": ASYNCMY, "aiomysql": AIOMYSQL},
    has_statement_timeout=True,
    # MariaDB's max_statement_time is at most 31536000 s (a year); more is cut to it.
    max_statement_timeout=31536000,
    recycle=3600,
    default_port=3306,
    commits_ddl=True,
    title="MariaDB/MySQL",
    schema_advice=": in MariaDB and MySQL a schema is a database; name it in the URL instead.",
)
