"""SQLite, through aiosqlite: a file (or memory) that needs no server."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import asbool

from dbscope._dialects._base import (
    OWN,
    Backend,
    Begin,
    Client,
    Connect,
    DatabaseRefused,
    ErrorKind,
)
from dbscope._dialects.aiosqlite_driver import AIOSQLITE, aiosqlite_status
from dbscope._dialects.marks import Found
from dbscope._dialects.write_lock import Writer, pass_turn, writer_of

# SQLITE_CONSTRAINT and its extended codes (unique, foreign key, check, not null, primary key).
CONSTRAINT: Final = 19
# SQLITE_BUSY and SQLITE_BUSY_SNAPSHOT: another writer was in the way. A transaction that
# read and then writes fails at once, busy timeout or not, while another holds the write lock
# (BUSY: waiting could deadlock) or after another committed (BUSY_SNAPSHOT: what it read is
# stale); one that writes first fails after waiting out the busy timeout (5 s). Either way,
# running the unit again is the cure, as for PostgreSQL's serialization failures.
BUSY: Final = 5
# dbscope's mark on the files it makes for test runs: "dbsc" in the header's application_id.
APPLICATION_ID: Final = 0x64627363
# What a checkpointed WAL file is cut back to (Rails keeps the same).
WAL_KEPT_BYTES: Final = 64 * 1024 * 1024
# A database file and the journal files beside it.
COMPANIONS: Final = ("", "-wal", "-shm", "-journal")

# What a SQLite URI's query may say of the file, besides uri=true: meaningless for a path.
URI_PARAMETERS: Final = ("uri", "mode", "cache", "vfs", "immutable", "psow", "nolock", "modeof")
# On a connection's info while it holds the migrations' lock: its next BEGIN, and the busy
# timeout (milliseconds) it had before.
NEXT_BEGIN: Final = "dbscope.next_begin"
# On a pooled connection's info, from a read-only unit's begin to its checkin: query-only.
QUERY_ONLY: Final = "dbscope.query_only"
KEPT_BUSY_TIMEOUT: Final = "dbscope.kept_busy_timeout"
# The execution option of the engine view of a unit that may write (Backend.writer_view).
WRITER_VIEW: Final = "dbscope_sqlite_writer"


class SQLite(Backend):
    """SQLite's rules: foreign keys on, WAL for files, an explicit BEGIN."""

    def begin(self, connection: Connection, wanted: Begin) -> None:
        # No READ ONLY transaction here: the connection is made query-only instead, so that
        # a read-only unit's write fails loudly by any path (a connection's commit(), a
        # COMMIT in SQL), as on PostgreSQL and MariaDB, until it goes back to the pool.
        if wanted.read_only and not connection.info.get(QUERY_ONLY):
            connection.exec_driver_sql("PRAGMA query_only = ON", execution_options=OWN)
            connection.info[QUERY_ONLY] = True

    def put_back(self, connection: Connection, before: Mapping[str, str]) -> None:
        if connection.info.pop(QUERY_ONLY, False):
            connection.exec_driver_sql("PRAGMA query_only = OFF", execution_options=OWN)

    def begin_again_if_ended(self, dbapi_connection: Any) -> bool:
        # ON CONFLICT ROLLBACK, a full disk: SQLite's own rollback, which the driver's state
        # tells. The connection is in autocommit, BEGIN explicit (below): after it each
        # statement would commit by itself.
        if aiosqlite_status(dbapi_connection.driver_connection) != "idle":
            return False
        cursor = dbapi_connection.cursor()
        cursor.execute("BEGIN")
        cursor.close()
        return True

    def configure(self, engine: AsyncEngine, *, memory: bool) -> None:
        pragmas = ["PRAGMA foreign_keys=ON"]
        if not memory:
            pragmas.append("PRAGMA journal_mode=WAL")  # readers proceed while one writes
            # A reader held open keeps the WAL from being checkpointed, and it grows while
            # writers go on (18 MB in 18 s under load): cut back to 64 MiB once it can be.
            pragmas.append(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")

        def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            # The sqlite3 module's own transaction handling issues BEGIN only before writes
            # and breaks SAVEPOINT; turn it off and let SQLAlchemy say BEGIN (below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in pragmas:
                cursor.execute(pragma)
            cursor.close()

        writer = Writer() if memory else writer_of(_path_of(engine.url))

        def on_begin(connection: Connection) -> None:
            # A unit that may write takes the file's one write lock at its BEGIN (IMMEDIATE),
            # waiting its turn (the busy timeout) while another writes. Deferred, it would take
            # it at its first write, and one that read first then fails at once, waiting or
            # not (BUSY, above): 944 of 1,000 read-then-write requests at 20 at once. Read-only
            # units, and the engine's own uses (the migrations' lock), read beside it (WAL).
            unit_writes = bool(connection.get_execution_options().get(WRITER_VIEW))
            if not unit_writes or NEXT_BEGIN in connection.info:
                begin = connection.info.get(NEXT_BEGIN, "BEGIN")
                connection.exec_driver_sql(begin, execution_options=OWN)
                return
            writer.refuse_waiting_for_itself()
            if memory:  # the pool's one connection: its line is the pool's
                connection.exec_driver_sql("BEGIN IMMEDIATE", execution_options=OWN)
            else:
                _begin_in_turn(connection, writer)
            writer.took_the_lock(connection)

        event.listen(engine.sync_engine, "connect", on_connect)
        event.listen(engine.sync_engine, "begin", on_begin)
        event.listen(engine.sync_engine, "reset", _writable_again)
        # Given back, the connection's transaction is over, whichever way it ended. One the
        # garbage collector found checked out is detached instead (an asyncio pool's), never
        # checked in: its entry goes back to the pool, its info cleared at the next checkout.
        event.listen(engine.sync_engine, "checkin", _turn_passed)
        event.listen(engine.sync_engine, "detach", _turn_passed)

    def lock_migrations(self, connection: Connection, name: str, seconds: float) -> bool | None:
        # SQLite lets one connection at a time write a file. The migrations' transaction takes
        # that write lock at its BEGIN (IMMEDIATE), waiting up to ``seconds`` for another's to
        # end, not at its first write after reading the version, where another writer makes it
        # fail at once (BUSY, above). A wait that runs out fails that BEGIN with BUSY.
        kept = connection.exec_driver_sql("PRAGMA busy_timeout").scalar()
        connection.info[KEPT_BUSY_TIMEOUT] = kept
        connection.exec_driver_sql(f"PRAGMA busy_timeout = {max(1, round(seconds * 1000))}")
        connection.info[NEXT_BEGIN] = "BEGIN IMMEDIATE"
        return True

    def unlock_migrations(self, connection: Connection, name: str) -> None:
        connection.info.pop(NEXT_BEGIN, None)  # first: the statement below begins with BEGIN
        kept = connection.info.pop(KEPT_BUSY_TIMEOUT, None)
        if isinstance(kept, int):
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {kept}")

    def is_memory(self, url: URL) -> bool:
        if url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
            return True
        # SQLite's URI form of the same, file::memory: (?cache=shared, for one connection).
        return url.database == "file::memory:" and _is_uri(url)

    def probe_url(self, url: URL) -> URL | None:
        # A memory database lives in the pool's one connection: another would see an empty
        # one. A file is opened read-only, so that a probe never creates a missing file.
        if self.is_memory(url):
            return None
        database = url.database or ""
        if not database.startswith("file:"):
            database = Path(database).absolute().as_uri()
        return url.set(database=database).update_query_dict({"mode": "ro", "uri": "true"})

    def error_kind(self, orig: BaseException | None) -> ErrorKind | None:
        code = getattr(orig, "sqlite_errorcode", None)
        primary = code & 0xFF if isinstance(code, int) else None  # without its extended part
        if primary == CONSTRAINT:
            return "constraint"
        if primary == BUSY:
            return "conflict"
        return None

    def conflict_name(self, orig: BaseException | None) -> str:
        return f"write conflict ({self.error_code(orig)})"

    def constraint_name(self, orig: BaseException | None) -> str | None:
        # SQLite names no constraint, but a NULL refused by its column (no value in it):
        # "NOT NULL constraint failed: <table>.<column>".
        if self.error_code(orig) == "SQLITE_CONSTRAINT_NOTNULL":
            return f"{str(orig).rpartition(': ')[2]} NOT NULL"
        return None

    def error_code(self, orig: BaseException | None) -> str | None:
        name = getattr(orig, "sqlite_errorname", None)
        return name if isinstance(name, str) else None

    # A database is a file: made by opening it, no server to connect to.

    def database_named(self, url: URL, suffix: str) -> URL:
        database = url.database or ""
        if _is_uri(url) and database.startswith("file:"):
            # A URI (file:app.db?uri=true) names the file sqlite3 opens: its path, not the
            # text, is what the test database is named after and made, found and dropped by.
            database = unquote(urlsplit(database).path)
            url = url.difference_update_query(URI_PARAMETERS)
        path = Path(database)  # app.db gives app_test.db, beside it
        return url.set(database=str(path.with_name(f"{path.stem}{suffix}{path.suffix}")))

    def create_advice(self, name: str) -> str:
        return f"the directory of {name!r} must exist and be writable"

    # The file work runs in a thread: it blocks, if only for a moment.

    async def database_presence(self, url: URL, connect: Connect) -> Found:
        return await asyncio.to_thread(_presence, Path(url.database or ""))

    def mark_tables_statements(self, connection: Connection, fingerprint: str) -> list[str]:
        # Beside the mark (application_id), the header's other field of the application's.
        return [f"PRAGMA user_version = {int(fingerprint, 16)}"]

    async def create_database(self, url: URL, connect: Connect) -> None:
        await asyncio.to_thread(_create, Path(url.database or ""))

    async def drop_database(self, url: URL, connect: Connect, *, close_sessions: bool) -> None:
        await asyncio.to_thread(_drop, Path(url.database or ""))

    def client(self, url: URL, schema: str | None = None) -> Client | None:
        if self.is_memory(url):  # it lives inside the app's one connection
            return None
        path = url.database or ""
        return Client(
            programs=("sqlite3",),
            # A path that begins with '-' would be an option to sqlite3.
            arguments=(f"./{path}" if path.startswith("-") else path,),
            install="install SQLite's shell, e.g. apt install sqlite3",
        )


def _presence(path: Path) -> Found:
    if not path.exists():
        return Found("absent")
    try:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            (application_id,) = connection.execute("PRAGMA application_id").fetchone()
            (tables,) = connection.execute("PRAGMA user_version").fetchone()
    except sqlite3.DatabaseError:  # a file that is not a SQLite database
        return Found("unmarked")
    if application_id != APPLICATION_ID:
        return Found("unmarked")
    digits = BACKEND.fingerprint_digits
    return Found("marked", f"{tables:0{digits}x}" if tables else None)


def _create(path: Path) -> None:
    try:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.commit()
    except sqlite3.Error as error:
        raise DatabaseRefused(str(error)) from None


def _drop(path: Path) -> None:
    # Connections still open keep the files they hold; nothing waits for them.
    for suffix in COMPANIONS:
        path.with_name(path.name + suffix).unlink(missing_ok=True)


def _path_of(url: URL) -> Path:
    database = url.database or ""
    if _is_uri(url) and database.startswith("file:"):
        database = unquote(urlsplit(database).path)
    return Path(database).resolve()


def _is_uri(url: URL) -> bool:
    """Whether SQLAlchemy opens ``url``'s database as a SQLite URI (``?uri=true``, or any
    other way it reads as true)."""
    value = url.query.get("uri", False)
    return isinstance(value, str) and asbool(value)


def _begin_in_turn(connection: Connection, writer: Writer) -> None:
    """BEGIN IMMEDIATE once the units of this process ahead in line have written. A wait in
    line that ran out the busy timeout asks SQLite once, without waiting: BUSY if the lock
    is still held (another process's, or a lease's write), as SQLite alone said. One that
    had its turn waits SQLite's busy timeout again if another process took the lock as the
    turn came: shortening it to what is left would cost two statements (set, then put back)
    at each turn a unit waited for, the busy path's."""
    info = connection.info
    # The connection's own busy timeout, read when the unit must wait: sqlite3's timeout, or
    # what the app set since (a connect listener of its own, a lease's PRAGMA), which a
    # reading at connect missed, then overwrote after a wait that ran out.
    had_turn = writer.wait_turn(info, lambda: _busy_timeout(connection) / 1000)
    try:
        if had_turn:
            connection.exec_driver_sql("BEGIN IMMEDIATE", execution_options=OWN)
            return
        kept = _busy_timeout(connection)
        connection.exec_driver_sql("PRAGMA busy_timeout = 0", execution_options=OWN)
        try:
            connection.exec_driver_sql("BEGIN IMMEDIATE", execution_options=OWN)
        finally:
            connection.exec_driver_sql(f"PRAGMA busy_timeout = {kept}", execution_options=OWN)
    except BaseException:
        pass_turn(info)  # a BEGIN that failed, or was cancelled, holds no lock
        raise


def _busy_timeout(connection: Connection) -> int:
    """The connection's busy timeout, in milliseconds."""
    result = connection.exec_driver_sql("PRAGMA busy_timeout", execution_options=OWN)
    return int(result.scalar_one())


def _turn_passed(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    pass_turn(record.info)


def _writable_again(dbapi_connection: Any, record: ConnectionPoolEntry, reset_state: Any) -> None:
    # A read-only unit's query-only mode is the connection's: off before anyone else uses it.
    if record.info.pop(QUERY_ONLY, False):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only = OFF")
        cursor.close()


BACKEND: Final = SQLite(
    name="sqlite",
    aliases=(),
    drivers={"aiosqlite": AIOSQLITE},
    pinged=False,
    writer_view=(WRITER_VIEW,),
    title="SQLite",
    # user_version, a signed 32-bit integer, keeps 7 of the fingerprint's hex digits.
    fingerprint_digits=7,
    schema_advice=": a SQLite file is a database of its own, so tables kept apart get a file each.",
)
