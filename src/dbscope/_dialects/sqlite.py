"""SQLite, through aiosqlite: a file (or memory) that needs no server."""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from dbscope._dialects._base import Backend, Driver, ErrorKind, LeaseStatus

# SQLITE_CONSTRAINT and its extended codes (unique, foreign key, check, not null, primary key).
CONSTRAINT: Final = 19


class SQLite(Backend):
    """SQLite's rules: foreign keys on, WAL for files, an explicit BEGIN."""

    def configure(self, engine: AsyncEngine, *, memory: bool) -> None:
        pragmas = ["PRAGMA foreign_keys=ON"]
        if not memory:
            pragmas.append("PRAGMA journal_mode=WAL")  # readers proceed while one writes

        def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
            # The sqlite3 module's own transaction handling issues BEGIN only before writes
            # and breaks SAVEPOINT; turn it off and let SQLAlchemy say BEGIN (below).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            for pragma in pragmas:
                cursor.execute(pragma)
            cursor.close()

        def on_begin(connection: Connection) -> None:
            connection.exec_driver_sql("BEGIN")

        event.listen(engine.sync_engine, "connect", on_connect)
        event.listen(engine.sync_engine, "begin", on_begin)

    def is_memory(self, url: URL) -> bool:
        return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"

    def error_kind(self, orig: BaseException | None) -> ErrorKind | None:
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int) and code & 0xFF == CONSTRAINT:
            return "constraint"
        return None

    def error_code(self, orig: BaseException | None) -> str | None:
        name = getattr(orig, "sqlite_errorname", None)
        return name if isinstance(name, str) else None


def _sqlite_errors() -> tuple[type[BaseException], ...]:
    import sqlite3

    return (sqlite3.Error,)


def _aiosqlite_status(connection: Any) -> LeaseStatus:
    # dbscope opens SQLite connections with isolation_level=None: autocommit, BEGIN explicit.
    return "in_transaction" if connection.in_transaction else "idle"


async def _aiosqlite_rollback(connection: Any) -> None:
    await connection.rollback()


AIOSQLITE: Final = Driver(
    name="aiosqlite",
    install="pip install aiosqlite",
    errors=_sqlite_errors,
    status=_aiosqlite_status,
    rollback=_aiosqlite_rollback,
)
BACKEND: Final = SQLite(
    name="sqlite",
    aliases=(),
    drivers={"aiosqlite": AIOSQLITE},
    pinged=False,
    schema_advice=": a SQLite file is a database of its own, so tables kept apart get a file each.",
)
