"""PostgreSQL, through asyncpg and psycopg 3."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final, Literal, get_args

from sqlalchemy import event, text
from sqlalchemy.engine import URL, Connection, Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from dbscope._dialects import deferred_begin, pgbouncer
from dbscope._dialects._base import (
    OWN,
    Backend,
    Begin,
    Client,
    ErrorKind,
    RolledBack,
    quoted_database,
    server_version,
)
from dbscope._dialects.hosts import libpq_hosts, psql
from dbscope._dialects.marks import MARK, tables_mark
from dbscope._dialects.postgresql_drivers import raised_by_server, sqlstate, stale_plan
from dbscope._dialects.postgresql_events import (
    DRIVERS,
    READ_ONLY_SQL_TRANSACTION,
    WRITES,
    check_client_connection,
    demoted_primary,
    forget_writes,
)
from dbscope._dialects.replication import (
    REPLAYED,
    REPLICATION,
    STANDBYS_QUERY,
    WRITE_POSITION,
    Replication,
    Standbys,
    lsn_bytes,
    lsn_text,
    record_end,
)

# The server ending a connection for a limit of its own (a role's or the server's setting):
# a transaction idle between statements too long, a session idle too long. Either way the
# server rolled back what was open, so the outcome is known.
ENDED_FOR_IDLING: Final = {
    "25P03": (
        "The server ended the connection because the transaction stayed idle between "
        "statements longer than its idle_in_transaction_session_timeout: the transaction was "
        "rolled back, nothing of it kept. Keep waits (an external call, a sleep) out of the "
        "unit of work, or raise the limit for the role."
    ),
    "57P05": (
        "The server ended the connection because it stayed idle longer than its "
        "idle_session_timeout: nothing of the transaction was kept."
    ),
}
# A new connection refused for a connection limit (SQLSTATE 53300): the server's
# (max_connections, or the slots it reserves), a role's or a database's CONNECTION LIMIT.
TOO_MANY_CONNECTIONS: Final = "53300"
# Connection-level failures: class 08, admin shutdown, crash shutdown, cannot connect now,
# too many connections, the server's idle timeouts.
LOST: Final = frozenset({"57P01", "57P02", "57P03", TOO_MANY_CONNECTIONS, *ENDED_FOR_IDLING})
# Refusals no retry cures: class 28 (authentication), 3D000 (no such database), 42501 (a
# missing privilege).
REFUSED: Final = ("28", "3D000", "42501")
CONFLICTS: Final = frozenset({"40001", "40P01"})
QUERY_CANCELED: Final = "57014"
IN_FAILED_TRANSACTION: Final = "25P02"
NOT_NULL_VIOLATION: Final = "23502"
READ_COMMITTED: Final = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
# A lock not had within lock_timeout.
LOCK_NOT_AVAILABLE: Final = "55P03"
# What synchronous_commit takes, from the most a commit waits for to the least.
SynchronousCommit = Literal["remote_apply", "on", "remote_write", "local", "off"]
SYNCHRONOUS_COMMIT: Final = get_args(SynchronousCommit)
# libpq (psycopg) gives no SQLSTATE for a failed connect: a FATAL message means the server
# answered, and refused for good unless it is in one of these passing states.
PASSING_FATAL_STATES: Final = (
    "starting up",
    "shutting down",
    "recovery",
    "too many",
    "administrator command",
)
# libpq's words for it, which psycopg gives without the SQLSTATE.
CONNECTION_LIMIT_WORDS: Final = (
    "too many connections for",
    "too many clients already",
    "remaining connection slots are reserved",
)
# SET LOCAL application_name, with the name as a parameter: the statement text stays the same
# for every request, so that asyncpg prepares it once per connection, not once per request.
NAME_TRANSACTION: Final = text("SELECT set_config('application_name', :name, true)")
# What pg_stat_activity keeps of an application_name (NAMEDATALEN - 1 bytes).
APPLICATION_NAME_BYTES: Final = 63


class PostgreSQL(Backend):
    """PostgreSQL's rules: ``SET LOCAL`` for every unit setting, SQLSTATEs for errors."""

    def begin(self, connection: Connection, wanted: Begin) -> None:
        # First: the statements below, if any, then begin the transaction (deferred_begin.py).
        deferred_begin.defer(connection)
        # A read-only unit on its own engine begins with BEGIN READ ONLY (an engine view, see
        # _unit_of_work); bound to a test's connection it is a savepoint, and says so here.
        if wanted.read_only and not connection.get_execution_options().get("postgresql_readonly"):
            connection.exec_driver_sql("SET TRANSACTION READ ONLY", execution_options=OWN)
        # Whether a read-only refusal is the unit's own doing or a demoted primary's (below).
        connection.info[WRITES] = not wanted.read_only
        if wanted.synchronous_commit is not None:
            # One of SYNCHRONOUS_COMMIT (UnitOptions checked it): no quoting needed.
            statement = f"SET LOCAL synchronous_commit = {wanted.synchronous_commit}"
            connection.exec_driver_sql(statement, execution_options=OWN)
        if wanted.statement_timeout is not None:
            milliseconds = max(1, round(wanted.statement_timeout * 1000))
            statement = f"SET LOCAL statement_timeout = {milliseconds}"
            connection.exec_driver_sql(statement, execution_options=OWN)
        if wanted.schema is not None:
            statement = self.schema_statement(connection.dialect, wanted.schema)
            connection.exec_driver_sql(statement, execution_options=OWN)

    def settings_before(
        self, connection: Connection, wanted: Begin, *, named: bool
    ) -> Mapping[str, str]:
        # The test's own values (a SET LOCAL of its transaction), not DEFAULT, which is the
        # session's: put_back() restores them. Read-only needs nothing: a read-only unit
        # never commits, and its rollback reverts.
        names = [
            setting
            for setting, will_set in (
                ("synchronous_commit", wanted.synchronous_commit is not None),
                ("statement_timeout", wanted.statement_timeout is not None),
                ("search_path", wanted.schema is not None),
                ("application_name", named),
            )
            if will_set
        ]
        if not names:
            return {}
        query = "SELECT " + ", ".join(f"current_setting('{name}')" for name in names)
        values = connection.exec_driver_sql(query, execution_options=OWN).one()
        return dict(zip(names, values, strict=True))

    def put_back(self, connection: Connection, before: Mapping[str, str]) -> None:
        if not before:
            return
        # set_config(..., true) is SET LOCAL; the names are ours (settings_before's), the
        # values go as parameters: one statement, whatever they hold.
        calls = ", ".join(f"set_config('{name}', :{name}, true)" for name in before)
        connection.execute(text(f"SELECT {calls}"), dict(before), execution_options=OWN)

    def name_transaction(self, connection: Connection, name: str) -> None:
        # Reverts at the transaction's end, as SET LOCAL does: the pooled connection goes back
        # with its own name. Cut here, not by the server, so that a long header costs nothing.
        # A NUL, which no text value of PostgreSQL holds, failed the unit (a 500 for a header
        # an ASGI server passed on): left out.
        cut = name.replace("\x00", "").encode()[:APPLICATION_NAME_BYTES].decode(errors="ignore")
        connection.execute(NAME_TRANSACTION, {"name": cut}, execution_options=OWN)

    def schema_statement(self, dialect: Dialect, schema: str | None) -> str:
        # The name was checked to be a plain identifier (UnitOptions); quoted all the same.
        target = "DEFAULT" if schema is None else dialect.identifier_preparer.quote(schema)
        return f"SET LOCAL search_path TO {target}"

    def configure(self, engine: AsyncEngine, *, memory: bool) -> None:
        event.listen(engine.sync_engine, "handle_error", demoted_primary)
        on_error = self.drivers[engine.dialect.driver].on_error
        if on_error is not None:
            event.listen(engine.sync_engine, "handle_error", on_error)
        event.listen(engine.sync_engine, "checkin", forget_writes)

    def set_up_sessions(self, engine: AsyncEngine) -> None:
        event.listen(engine.sync_engine, "connect", check_client_connection)

    def defer_begins(self, engine: AsyncEngine) -> None:
        status = self.drivers[engine.dialect.driver].status
        if status is not None:
            deferred_begin.install(engine, status)

    def primary_url_problem(self, url: URL) -> str | None:
        hosts, _ = libpq_hosts(url)
        if not hosts or "," not in hosts or "target_session_attrs" in url.query:
            return None
        # libpq and asyncpg connect to the first host that answers: after a failover, that
        # may be the old primary come back as a standby, where every write fails.
        return (
            f"the URL {url.render_as_string()} names several hosts and no "
            "target_session_attrs, so each connection goes to the first host that answers, "
            "a standby after a failover, where every write fails. Add "
            "target_session_attrs=read-write to the query to reach the primary wherever it "
            "is (or target_session_attrs=any to take the first that answers)"
        )

    def error_code(self, orig: BaseException | None) -> str | None:
        return sqlstate(orig)

    def error_kind(self, orig: BaseException | None) -> ErrorKind | None:
        code = sqlstate(orig)
        if code is None:
            text = str(orig)
            if "FATAL:" in text and not any(state in text for state in PASSING_FATAL_STATES):
                return "refused"
            return None
        if pgbouncer.refused_login(code, str(orig)):
            return "refused"
        if code in LOST or code.startswith("08"):
            return "lost"
        if code.startswith(REFUSED):
            return "refused"
        if code in CONFLICTS:
            return "conflict"
        if stale_plan(orig):
            # A prepared statement whose result columns a schema change altered: the server
            # refused it and ended the transaction, and the drivers' caches are cleared
            # (SQLAlchemy's for asyncpg, dropped_stale_plans for psycopg), so running the unit
            # again prepares it anew.
            return "conflict"
        if code == QUERY_CANCELED:
            return "timeout"
        if code == LOCK_NOT_AVAILABLE:  # lock_timeout ran out, or NOWAIT found the lock held
            return "lock_wait"
        if code.startswith("23"):
            return "constraint"
        if code == READ_ONLY_SQL_TRANSACTION:
            return "read_only"
        return None

    def failure_undone(self, connection: Connection) -> bool:
        # An aborted transaction refuses any statement (25P02, which handle_error answers
        # with the remembered error): one round trip, on a failure's path only.
        try:
            connection.exec_driver_sql("SELECT 1", execution_options=OWN)
        except Exception:
            return False
        return True

    def rolled_back_by(self, orig: BaseException | None) -> RolledBack | None:
        # Any error of the server's aborts the transaction; the drivers' own (an argument
        # they could not send) never reached it.
        if sqlstate(orig) == IN_FAILED_TRANSACTION:
            return "earlier"
        return "to_savepoint" if raised_by_server(orig) else None

    def at_connection_limit(self, orig: BaseException | None) -> bool:
        code = sqlstate(orig)
        if code is not None:
            return code == TOO_MANY_CONNECTIONS
        text = str(orig)
        return "FATAL:" in text and any(words in text for words in CONNECTION_LIMIT_WORDS)

    def lost_because(self, orig: BaseException | None) -> str | None:
        code = sqlstate(orig)
        return ENDED_FOR_IDLING.get(code or "") or pgbouncer.queue_waited_out(code, str(orig))

    def setup_advice(self, orig: BaseException | None) -> str | None:
        return pgbouncer.statements_advice(sqlstate(orig))

    def conflict_name(self, orig: BaseException | None) -> str:
        if stale_plan(orig):
            return "prepared statement made stale by a schema change"
        return "deadlock" if sqlstate(orig) == "40P01" else "serialization failure"

    def constraint_name(self, orig: BaseException | None) -> str | None:
        for candidate in (orig, getattr(orig, "__cause__", None)):
            # asyncpg's error has the fields itself, psycopg's in its diag
            fields = getattr(candidate, "diag", candidate)
            name = getattr(fields, "constraint_name", None)
            if isinstance(name, str):
                return name
            table = getattr(fields, "table_name", None)
            column = getattr(fields, "column_name", None)
            if table and column and sqlstate(orig) == NOT_NULL_VIOLATION:  # no name before 18
                return f"{table}.{column} NOT NULL"
        return None

    def too_long(self, name: str) -> str | None:
        # A longer name is cut short silently, so that two runs could share one database.
        return "63 bytes" if len(name.encode()) > 63 else None

    def create_advice(self, name: str) -> str:
        return "the user needs the right to create databases (ALTER ROLE ... CREATEDB)"

    def maintenance_url(self, url: URL) -> URL:
        return url.set(database="postgres")  # every server has it

    def presence_query(self, connection: AsyncConnection) -> str:
        return "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = :name"

    def create_statements(self, connection: AsyncConnection, name: str) -> list[str]:
        return [f"CREATE DATABASE {name}", f"COMMENT ON DATABASE {name} IS '{MARK}'"]

    def mark_tables_statements(self, connection: Connection, fingerprint: str) -> list[str]:
        return [
            f"COMMENT ON DATABASE {quoted_database(connection)} IS '{tables_mark(fingerprint)}'"
        ]

    def drop_statements(
        self, connection: AsyncConnection, name: str, *, close_sessions: bool
    ) -> list[str]:
        # FORCE (PostgreSQL 13 and later) ends the sessions left open; without it, a database
        # in use is refused at once.
        force = close_sessions and server_version(connection) >= (13,)
        return [f"DROP DATABASE IF EXISTS {name}" + (" WITH (FORCE)" if force else "")]

    def client(self, url: URL, schema: str | None = None) -> Client | None:
        return psql(url, schema)

    def lock_migrations(self, connection: Connection, name: str, seconds: float) -> bool | None:
        # A transaction's advisory lock, taken in the migrations' own transaction and let go
        # at its end: a session's would stay behind PgBouncer in transaction mode, on the
        # server connection that took it. lock_timeout bounds the wait, then is put back.
        milliseconds = max(1, round(seconds * 1000))
        lock = f"SELECT pg_catalog.pg_advisory_xact_lock({_advisory_key(name)})"
        # REPEATABLE READ's snapshot, taken as the lock is asked, would miss the other's run.
        connection.exec_driver_sql(READ_COMMITTED, execution_options=OWN)
        connection.exec_driver_sql(
            f"SET LOCAL lock_timeout = {milliseconds}", execution_options=OWN
        )
        try:
            connection.exec_driver_sql(lock)
        except DBAPIError as error:
            if sqlstate(error.orig) == LOCK_NOT_AVAILABLE:
                return False
            raise
        connection.exec_driver_sql("SET LOCAL lock_timeout TO DEFAULT", execution_options=OWN)
        return True

    def write_position(self, dbapi_connection: Any) -> int:
        # Outside a transaction (autocommit: no BEGIN, nothing for the pool to roll back), on
        # the connection that committed: its log position now is past its commit record.
        was = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            cursor = dbapi_connection.cursor()
            cursor.execute(WRITE_POSITION)
            position, page, segment = cursor.fetchone()
            cursor.close()
        finally:
            dbapi_connection.autocommit = was
        return record_end(lsn_bytes(position), page, segment)

    async def log_position(self, connection: AsyncConnection) -> int:
        result = await connection.execute(text(WRITE_POSITION), execution_options=OWN)
        position, page, segment = result.one()
        return record_end(lsn_bytes(position), page, segment)

    async def replication(self, connection: AsyncConnection) -> Replication:
        cluster, replica, replayed, current = (
            await connection.execute(text(REPLICATION), execution_options=OWN)
        ).one()
        position = replayed if replica else current
        position = None if position is None else lsn_bytes(position)
        return Replication(cluster=cluster or "", replica=replica, position=position)

    async def replayed(self, connection: AsyncConnection, position: int) -> bool:
        position_text = {"position": lsn_text(position)}
        result = await connection.execute(text(REPLAYED), position_text, execution_options=OWN)
        return bool(result.scalar())

    async def standbys(self, connection: AsyncConnection) -> Standbys | None:
        row = (await connection.execute(text(STANDBYS_QUERY), execution_options=OWN)).one()
        setting, commit, in_sync, hidden, connected = row
        # A user without pg_monitor sees the standbys, not their states: in sync unknown.
        in_sync = None if hidden and not in_sync else in_sync
        return Standbys(setting, commit, in_sync, connected)


def _advisory_key(name: str) -> int:
    """The advisory lock key (a bigint) of the lock ``name``: the same in every process."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


BACKEND: Final = PostgreSQL(
    has_replicas=True,
    name="postgresql",
    aliases=("postgres",),
    drivers=DRIVERS,
    has_schemas=True,
    has_statement_timeout=True,
    # statement_timeout is an int of milliseconds: at most 2147483647 ms.
    max_statement_timeout=2147483.647,
    has_synchronous_commit=True,
    read_only_view=("postgresql_readonly",),
    default_port=5432,
    connected_refuses_drop=True,
    locks_migrations_in_transaction=True,
    title="PostgreSQL",
)
