"""SQLite files: a unit that reads, then writes, is not failed by another unit's commit.

In WAL mode a deferred transaction reads a snapshot; if another connection commits before it
writes, its write fails at once with "database is locked" (SQLITE_BUSY_SNAPSHOT), whatever
the busy timeout. dbscope begins every unit that may write with BEGIN IMMEDIATE, so writers
take turns from their first statement; read-only units still read alongside.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import asyncio
import sqlite3
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, RetriesExhaustedError

from .helpers import client_for

CREATE = "CREATE TABLE sw_rows (id INTEGER PRIMARY KEY, origin TEXT)"


@pytest.fixture
async def db(tmp_path: Path) -> Database:
    """A connected Database on a SQLite file, with an empty sw_rows table."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", pool_size=20)
    async with database, database.transaction() as session:
        await session.execute(text(CREATE))
    return database


async def count(db: Database) -> int:
    """The rows of sw_rows."""
    async with db.transaction(read_only=True) as session:
        return int(await session.scalar(select(func.count()).select_from(text("sw_rows"))) or 0)


async def test_a_commit_between_a_units_read_and_its_write_does_not_fail_it(db: Database) -> None:
    """A reads; B tries to write and commit meanwhile; A writes: both commit, B after A."""
    async with db:
        order: list[str] = []
        read = asyncio.Event()

        async def writer_b() -> None:
            await read.wait()
            async with db.transaction() as session:
                await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('b')"))
            order.append("b")

        b = asyncio.create_task(writer_b())
        async with db.transaction() as session:
            await session.scalar(text("SELECT count(*) FROM sw_rows"))
            read.set()
            # Without BEGIN IMMEDIATE, B commits here at once and A's write below fails.
            await asyncio.wait({b}, timeout=1.0)
            await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('a')"))
        order.append("a")
        await b
        assert order == ["a", "b"]
        assert await count(db) == 2


async def test_concurrent_read_then_write_requests_all_succeed(db: Database) -> None:
    """40 requests at once, each reading then writing, as POST endpoints do: none fails."""
    app = FastAPI()
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/rows", status_code=201)
    async def add(session: Session) -> dict[str, int]:
        before = int(await session.scalar(text("SELECT count(*) FROM sw_rows")) or 0)
        await asyncio.sleep(0)  # let the other requests' units begin meanwhile
        await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('http')"))
        return {"before": before}

    async with db, client_for(app) as client:
        responses = await asyncio.gather(*(client.post("/rows") for _ in range(40)))
        assert [r.status_code for r in responses] == [201] * 40
        # Writers took turns: each saw every row committed before it, none a stale snapshot.
        assert sorted(r.json()["before"] for r in responses) == list(range(40))
        assert await count(db) == 40


async def test_read_only_units_read_while_a_writer_holds_the_lock(db: Database) -> None:
    """A read-only unit begins DEFERRED: it reads the last commit while a writer is inside."""
    async with db:
        async with db.transaction() as writer:
            await writer.execute(text("INSERT INTO sw_rows (origin) VALUES ('w')"))
            assert await count(db) == 0  # not blocked: read beside the writer, before its commit
        assert await count(db) == 1


async def insert_retried(db: Database, *, lock_timeouts: bool = False) -> None:
    """Insert a row in a unit retried up to twice, at once, lock waits included on request."""
    async for attempt in db.retrying(attempts=2, backoff=0, lock_timeouts=lock_timeouts):
        async with attempt as session:
            await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('x')"))


async def test_a_writer_that_waits_past_the_busy_timeout_is_a_lock_wait_timeout(
    tmp_path: Path,
) -> None:
    """Past the busy timeout the unit fails as a lock wait: retried with lock_timeouts=True."""
    path = tmp_path / "app.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute(CREATE)
    holder.execute("PRAGMA journal_mode=WAL")  # as dbscope opens it
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held for the whole test
    db = Database(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        async with db:
            with pytest.raises(RetriesExhaustedError, match=r"lock wait timeout \(SQLITE_BUSY\)"):
                await insert_retried(db, lock_timeouts=True)
            with pytest.raises(OperationalError, match="database is locked"):
                await insert_retried(db)
    finally:
        holder.close()
