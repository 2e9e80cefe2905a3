"""A unit cancelled while its connection goes back to the pool logs no ERROR.

asyncmy's ROLLBACK at the pool's reset goes to the server, aiosqlite's to its thread: a cancel
lands there about once in ten cancels of a unit in a loop, and SQLAlchemy logged "Exception
during reset or similar" at ERROR with a traceback for it, then dropped the connection, as it
should. Each test cancels a loop of units at a random moment, many times, and reads the log.
"""

import asyncio
import contextlib
import logging
import random

import pytest
from sqlalchemy import text

from dbscope import Database
from tests.helpers import Tables, admin

CANCELS = 120


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncmy"])
async def test_a_cancel_at_a_checkin_is_logged_as_no_error(
    database_url: str, tables: Tables, caplog: pytest.LogCaptureFixture
) -> None:
    await tables.create("cc_ticks", "n INTEGER NOT NULL")
    insert = text("INSERT INTO cc_ticks (n) VALUES (1)")
    randomly = random.Random(7)  # noqa: S311 - cut points, not secrets

    async def units(db: Database) -> None:
        while True:
            async with db.transaction() as session:
                await session.execute(insert)
                await asyncio.sleep(0)

    caplog.set_level(logging.WARNING)
    async with Database(database_url, pool_size=3, max_overflow=0) as db:
        for _ in range(CANCELS):
            task = asyncio.ensure_future(units(db))
            await asyncio.sleep(randomly.uniform(0.001, 0.02))
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        stats = db.stats()
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []
    assert stats.checked_out == 0


@pytest.mark.parametrize("db_backend", ["asyncmy"])
async def test_a_statement_cut_off_by_a_cancel_is_stopped_on_the_server(database_url: str) -> None:
    """MariaDB runs a statement on a connection gone to its end (here 30 s, its locks held):
    cancelled units piled up server threads past the pool. dbscope sends KILL QUERY for each
    from a connection of its own; the server's process list shows none of them running."""
    marker = f"cut_{random.randrange(10**9)}"  # noqa: S311 - a name, not a secret
    running = text("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE :seen")

    async def sleeping(db: Database) -> None:
        async with db.transaction() as session:
            await session.execute(text(f"SELECT SLEEP(30) /* {marker} */"))

    async with Database(database_url, pool_size=5, max_overflow=0) as db:
        tasks = [asyncio.ensure_future(sleeping(db)) for _ in range(5)]
        async with admin(database_url) as watcher:
            seen = {"seen": f"SELECT SLEEP(30) /* {marker}%"}
            for _ in range(200):  # all five running first
                if await watcher.scalar(running, seen) == len(tasks):
                    break
                await asyncio.sleep(0.05)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            left = len(tasks)
            # Up to 2 s of the 30 they would run (MariaDB's SLEEP() notices a connection
            # gone only every 5 s; a real statement never).
            for _ in range(40):
                left = await watcher.scalar(running, seen)
                if left == 0:
                    break
                await asyncio.sleep(0.05)
        stats = db.stats()
    assert left == 0
    assert stats.invalidated == len(tasks)
