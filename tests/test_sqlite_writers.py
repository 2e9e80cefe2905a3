"""SQLite files: a unit that reads, then writes after another unit committed, is a conflict.

In WAL mode a deferred transaction reads a snapshot; if another connection holds the write
lock or has committed since, its write fails at once with "database is locked" (SQLITE_BUSY,
SQLITE_BUSY_SNAPSHOT), whatever the busy timeout: the stale read PostgreSQL reports as a
serialization failure. dbscope reads it as a conflict, so ``db.retrying()`` and
``@db.retry()`` run the unit again. Units
begin deferred, not IMMEDIATE: a unit open around another (a middleware's around the
request's) would otherwise hold the one write lock the inner unit waits for.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import asyncio
import sqlite3
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
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


async def stale_write(db: Database, attempts: int) -> int:
    """A reads; B writes and commits; A writes, in a unit of ``attempts``: A's retries."""
    read, committed = asyncio.Event(), asyncio.Event()

    async def writer_b() -> None:
        await read.wait()
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('b')"))
        committed.set()

    b = asyncio.create_task(writer_b())
    retrying = db.retrying(attempts=attempts, backoff=0)
    try:
        async for attempt in retrying:
            async with attempt as session:
                await session.scalar(text("SELECT count(*) FROM sw_rows"))
                read.set()
                await committed.wait()
                await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('a')"))
    finally:
        await b
    return retrying.retries


async def test_a_commit_between_a_units_read_and_its_write_is_a_conflict_retried(
    db: Database,
) -> None:
    """A's write after B's commit is a write conflict: A's second attempt commits. With one
    attempt allowed, RetriesExhaustedError names it."""
    async with db:
        assert await stale_write(db, attempts=3) == 1
        with pytest.raises(RetriesExhaustedError, match=r"write conflict \(SQLITE_BUSY"):
            await stale_write(db, attempts=1)
        assert await count(db) == 3  # a and b, then b alone


async def test_concurrent_read_then_write_requests_all_succeed_with_retry(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """20 requests at once, each reading then writing, under @db.retry(): none fails, and the
    count each committed attempt read is every row committed before it."""
    app = FastAPI()
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/rows", status_code=201)
    @db.retry(attempts=20, backoff=0.005, max_backoff=0.05)
    async def add(session: Session) -> dict[str, int]:
        before = int(await session.scalar(text("SELECT count(*) FROM sw_rows")) or 0)
        await asyncio.sleep(0)  # let the other requests' units read meanwhile
        await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('http')"))
        return {"before": before}

    async with db, client_for(app) as client:
        responses = await asyncio.gather(*(client.post("/rows") for _ in range(20)))
        assert [r.status_code for r in responses] == [201] * 20
        assert sorted(r.json()["before"] for r in responses) == list(range(20))
        assert await count(db) == 20
    # The conflicts were real, and retried.
    assert any("after a write conflict (SQLITE_BUSY" in line for line in caplog.messages)


async def test_read_only_units_read_while_a_writer_holds_the_lock(db: Database) -> None:
    """A read-only unit begins DEFERRED: it reads the last commit while a writer is inside."""
    async with db:
        async with db.transaction() as writer:
            await writer.execute(text("INSERT INTO sw_rows (origin) VALUES ('w')"))
            assert await count(db) == 0  # not blocked: read beside the writer, before its commit
        assert await count(db) == 1


async def test_a_writer_that_waits_past_the_busy_timeout_is_a_conflict_retried(
    tmp_path: Path,
) -> None:
    """Past the busy timeout a write-first unit fails as a write conflict, run again."""
    path = tmp_path / "app.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute(CREATE)
    holder.execute("PRAGMA journal_mode=WAL")  # as dbscope opens it
    holder.execute("BEGIN IMMEDIATE")  # the write lock, held for the whole test
    db = Database(f"sqlite+aiosqlite:///{path}", connect_args={"timeout": 0.05})
    try:
        async with db:
            with pytest.raises(
                RetriesExhaustedError, match=r"write conflict \(SQLITE_BUSY\)"
            ) as ran:
                await insert_retried(db)
            assert ran.value.attempts == 2
    finally:
        holder.close()


async def insert_retried(db: Database) -> None:
    """Insert a row in a unit run at most twice, the second at once."""
    async for attempt in db.retrying(attempts=2, backoff=0):
        async with attempt as session:
            await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('x')"))


async def test_a_commit_that_fails_leaves_no_transaction_for_the_next_user(tmp_path: Path) -> None:
    """A deferred foreign key failing at COMMIT (SQLite keeps the transaction open then) is
    rolled back: the next unit on the same pooled connection begins, and a lease's write is
    kept as soon as it returns."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'fk.db'}", pool_size=1)
    async with database:
        async with database.transaction() as session:
            await session.execute(text("CREATE TABLE sw_parent (id INTEGER PRIMARY KEY)"))
            await session.execute(
                text(
                    "CREATE TABLE sw_child (parent_id INTEGER REFERENCES sw_parent (id) "
                    "DEFERRABLE INITIALLY DEFERRED)"
                )
            )
        with pytest.raises(IntegrityError):
            async with database.transaction() as session:
                await session.execute(text("INSERT INTO sw_child (parent_id) VALUES (9)"))
        async with database.transaction() as session:  # the same connection: pool_size=1
            await session.execute(text("INSERT INTO sw_parent (id) VALUES (1)"))
        async with database.lease() as connection:
            await connection.execute("INSERT INTO sw_parent (id) VALUES (2)")
    with sqlite3.connect(tmp_path / "fk.db") as reader:
        parents = reader.execute("SELECT id FROM sw_parent ORDER BY id").fetchall()
        children = reader.execute("SELECT count(*) FROM sw_child").fetchone()
    assert parents == [(1,), (2,)]
    assert children == (0,)
