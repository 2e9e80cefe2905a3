"""Limits the server holds rather than the app (a role's or a user's settings, a DBA's): a
statement past the server's own statement timeout is the unit's StatementTimeoutError, as
past the unit's own; a transaction the server ends for idling says so.

The limits are set by the unit's own statements, as a role's or a user's would be, so that
the test needs no role of its own; dbscope does not know of them either way.
"""

import asyncio

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, func, select, text

from dbscope import Database, DatabaseUnavailableError, StatementTimeoutError
from tests.helpers import Tables, admin

metadata = MetaData()
notes = Table("server_limit_notes", metadata, Column("id", Integer, primary_key=True))
# A limit of the server's, and a statement that outlasts it, per server.
SERVER_LIMIT = {
    "postgresql": ("SET LOCAL statement_timeout = 50", "SELECT pg_sleep(5)"),
    "mysql": ("SET SESSION max_statement_time = 0.05", "SELECT SLEEP(5)"),
}


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg", "asyncmy"])
async def test_a_statement_past_the_servers_own_timeout_is_a_statement_timeout(
    database_url: str,
) -> None:
    """No statement_timeout in the unit: the server's cancel still answers as a timeout."""
    async with Database(database_url) as db:
        limit, slow = SERVER_LIMIT[db.engine.dialect.name]
        with pytest.raises(StatementTimeoutError, match="server's statement time limit"):  # noqa: PT012 - the unit's end is the point
            async with db.transaction() as session:
                await session.execute(text(limit))
                await session.execute(text(slow))
        assert db.stats().checked_out == 0
        async with db.transaction() as session:  # the connection serves the next unit
            assert await session.scalar(text("SELECT 1")) == 1


@pytest.mark.parametrize("db_backend", ["psycopg"])
@pytest.mark.parametrize("at", ["a statement", "the commit"])
async def test_a_transaction_ended_for_idling_says_so_and_that_nothing_was_kept(
    database_url: str, tables: Tables, at: str
) -> None:
    """psycopg reads the server's reason (asyncpg sees a closed connection alone)."""
    url = database_url
    await tables.create_all(metadata)
    async with Database(url) as db:
        with pytest.raises(DatabaseUnavailableError) as raised:  # noqa: PT012 - the unit's end is the point
            async with db.transaction() as session:
                await session.execute(text("SET LOCAL idle_in_transaction_session_timeout = 50"))
                await session.execute(notes.insert().values(id=1))
                await asyncio.sleep(0.5)  # an external call, between statements
                if at == "a statement":
                    await session.execute(notes.insert().values(id=2))
        assert "idle_in_transaction_session_timeout" in str(raised.value)
        assert not raised.value.outcome_unknown
        assert db.stats().checked_out == 0
        async with db.transaction() as session:  # a fresh connection serves the next unit
            assert await session.scalar(select(func.count()).select_from(notes)) == 0
    async with admin(url) as connection:
        assert await connection.scalar(select(func.count()).select_from(notes)) == 0


# The server ending one connection, from another: the unit's, while it is idle in its
# transaction (an idle timeout does the same; on MariaDB no session variable sets one).
END_CONNECTION = {
    "postgresql": ("SELECT pg_backend_pid()", "SELECT pg_terminate_backend({})"),
    "mysql": ("SELECT CONNECTION_ID()", "KILL {}"),
}


@pytest.mark.parametrize("db_backend", ["asyncpg", "asyncmy"])
async def test_a_commit_the_driver_never_sent_is_known_not_committed(
    database_url: str, tables: Tables
) -> None:
    """asyncpg and asyncmy see the connection gone and refuse to send the COMMIT: nothing
    was committed, and the 503 says so instead of an unknown outcome. (psycopg sends it, and
    reads the server's FATAL after: its outcome stays unknown, unless the server said why.)"""
    await tables.create_all(metadata)
    async with Database(database_url) as db, admin(database_url) as other:
        which, end = END_CONNECTION[db.engine.dialect.name]
        with pytest.raises(DatabaseUnavailableError) as raised:  # noqa: PT012 - the unit's end is the point
            async with db.transaction() as session:
                await session.execute(notes.insert().values(id=1))
                backend_id = await session.scalar(text(which))
                await other.execute(text(end.format(int(backend_id))))
                await asyncio.sleep(0.3)  # the driver hears of it
        assert "before the COMMIT was sent" in str(raised.value)
        assert not raised.value.outcome_unknown
        assert db.stats().checked_out == 0
    async with admin(database_url) as connection:
        assert await connection.scalar(select(func.count()).select_from(notes)) == 0
