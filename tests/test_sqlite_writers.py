"""SQLite files: one writer at a time, and units that wait their turn instead of failing.

A unit that may write begins ``BEGIN IMMEDIATE``: it takes the file's one write lock at its
first statement, waiting up to the busy timeout for another writer. Deferred, it would take
it at its first write, and one that read first would then fail at once ("database is
locked", SQLITE_BUSY or SQLITE_BUSY_SNAPSHOT) whenever another wrote meanwhile, whatever the
timeout. A read-only unit begins deferred and reads beside the writer (WAL). What still
fails (a wait past the busy timeout) is a write conflict, which retries run again.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations.

import asyncio
import contextlib
import sqlite3
from pathlib import Path
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database, RetriesExhaustedError

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


def try_to_write(path: Path) -> bool:
    """Whether another connection can take the file's write lock now, without waiting."""
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as error:
        if "database is locked" not in str(error):
            raise
        return False
    finally:
        other.close()  # rolls back
    return True


async def test_a_unit_that_may_write_holds_the_write_lock_from_its_first_statement(
    db: Database, tmp_path: Path
) -> None:
    """Once a read-write unit has read, no other writer can get in before its write: a
    deferred BEGIN would let one, and the unit's write would then fail at once. A read-only
    unit takes no lock."""
    path = tmp_path / "app.db"
    async with db:
        async with db.transaction() as session:
            await session.scalar(text("SELECT count(*) FROM sw_rows"))
            assert not try_to_write(path)
            await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('a')"))
        async with db.transaction(read_only=True) as session:
            await session.scalar(text("SELECT count(*) FROM sw_rows"))
            assert try_to_write(path)
        assert try_to_write(path)  # the unit's end let the lock go
        assert await count(db) == 1


async def test_concurrent_read_then_write_requests_all_succeed_without_retry(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """20 requests at once, each reading then writing, none retried: each waits its turn, and
    the count each read is every row committed before it (0 to 19), with no conflict. With a
    deferred BEGIN all but a few failed: "database is locked"."""
    app = FastAPI()
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/rows", status_code=201)
    async def add(session: Session) -> dict[str, int]:
        before = int(await session.scalar(text("SELECT count(*) FROM sw_rows")) or 0)
        await asyncio.sleep(0)  # let the other requests' units begin meanwhile
        await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('http')"))
        return {"before": before}

    async with db, client_for(app) as client:
        responses = await asyncio.gather(*(client.post("/rows") for _ in range(20)))
        assert [r.status_code for r in responses] == [201] * 20
        assert sorted(r.json()["before"] for r in responses) == list(range(20))
        assert await count(db) == 20
    assert not [line for line in caplog.messages if "SQLITE_BUSY" in line]


async def test_a_unit_that_may_write_inside_one_that_holds_the_lock_is_refused(
    tmp_path: Path,
) -> None:
    """In one task, a unit that may write opened inside one that has begun would wait for it
    until the busy timeout: refused at once, naming the fix. A read-only one reads, and a
    task the outer unit started waits its turn and writes once it has ended."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", connect_args={"timeout": 1})
    async with database:
        async with database.transaction() as session:
            await session.execute(text(CREATE))

        async def insert(origin: str) -> None:
            async with database.transaction() as inner:
                await inner.execute(text(f"INSERT INTO sw_rows (origin) VALUES ('{origin}')"))

        async def nested() -> None:
            async with database.transaction() as outer:
                await outer.execute(text("INSERT INTO sw_rows (origin) VALUES ('outer')"))
                await insert("inner")

        with pytest.raises(ConfigurationError, match=r"would wait for itself.*read_only=True"):
            await nested()
        async with database.transaction() as outer:
            await outer.execute(text("INSERT INTO sw_rows (origin) VALUES ('outer')"))
            assert await count(database) == 0  # a read-only unit inside: not refused
            later = asyncio.create_task(insert("task"))
        await later
        assert await count(database) == 2


async def test_a_writer_whose_last_lock_went_to_a_read_only_unit_is_not_refused(
    tmp_path: Path,
) -> None:
    """A task's write unit has ended; a read-only unit now runs on the pooled connection it
    wrote on (pool_size=1), in this task or another. The task's next unit that may write
    waits for nobody, and writes: the read-only unit holds no lock."""
    database = Database(
        f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", pool_size=1, connect_args={"timeout": 1}
    )
    async with database:
        async with database.transaction() as session:
            await session.execute(text(CREATE))
        async with database.transaction(read_only=True) as reader:
            await reader.execute(text("SELECT count(*) FROM sw_rows"))
            async with database.transaction() as writer:  # inside this task's read-only unit
                await writer.execute(text("INSERT INTO sw_rows (origin) VALUES ('inside')"))
        reading = asyncio.Event()

        async def read_in_another_task() -> None:
            async with database.transaction(read_only=True) as other:
                await other.execute(text("SELECT count(*) FROM sw_rows"))
                reading.set()
                await asyncio.sleep(0.2)

        other = asyncio.create_task(read_in_another_task())
        await reading.wait()
        async with database.transaction() as writer:  # beside another task's read-only unit
            await writer.execute(text("INSERT INTO sw_rows (origin) VALUES ('beside')"))
        await other
        assert await count(database) == 2


async def test_a_unit_of_another_database_on_the_file_inside_one_holding_the_lock_is_refused(
    tmp_path: Path,
) -> None:
    """Two Databases on one file share its write lock: a unit of one that may write, opened
    in the task inside the other's that holds it, is refused at once, not left to wait."""
    first = Database(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", connect_args={"timeout": 1})
    second = Database(f"sqlite+aiosqlite:///{tmp_path}/./app.db", connect_args={"timeout": 1})
    async with first, second:
        async with first.transaction() as session:
            await session.execute(text(CREATE))

        async def nested() -> None:
            async with first.transaction() as outer:
                await outer.scalar(text("SELECT count(*) FROM sw_rows"))
                async with second.transaction() as inner:
                    await inner.execute(text("INSERT INTO sw_rows (origin) VALUES ('b')"))

        with pytest.raises(ConfigurationError, match=r"would wait for itself"):
            await nested()
        async with second.transaction() as session:  # after it: not refused
            await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('b')"))
        assert await count(first) == 1


async def test_parallel_writers_inside_a_unit_holding_the_lock_are_refused(
    tmp_path: Path,
) -> None:
    """db.parallel()'s units that may write, inside a unit of the caller holding the lock,
    would wait for it while it awaits them: refused at once, not after the busy timeout.
    Outside it they take turns."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'app.db'}", connect_args={"timeout": 1})

    async def insert(session: AsyncSession) -> None:
        await session.execute(text("INSERT INTO sw_rows (origin) VALUES ('parallel')"))

    async def inside() -> None:
        async with database.transaction() as outer:
            await outer.scalar(text("SELECT count(*) FROM sw_rows"))
            await database.parallel(insert, insert, read_only=False)

    async with database:
        async with database.transaction() as session:
            await session.execute(text(CREATE))
        # Waiting, they would fail with "database is locked" after the busy timeout instead.
        with pytest.raises(ConfigurationError, match=r"would wait for itself"):
            await inside()
        await database.parallel(insert, insert, read_only=False)
        assert await count(database) == 2


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
    with contextlib.closing(sqlite3.connect(tmp_path / "fk.db")) as reader:
        parents = reader.execute("SELECT id FROM sw_parent ORDER BY id").fetchall()
        children = reader.execute("SELECT count(*) FROM sw_child").fetchone()
    assert parents == [(1,), (2,)]
    assert children == (0,)
