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
from tests.helpers import Tables

CANCELS = 120
# Far more units than a loop runs before its cancel (at most 20 ms).
UNITS_AT_MOST = 2000


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncmy"])
async def test_a_cancel_at_a_checkin_is_logged_as_no_error(
    database_url: str, tables: Tables, caplog: pytest.LogCaptureFixture
) -> None:
    await tables.create("cc_ticks", "n INTEGER NOT NULL")
    insert = text("INSERT INTO cc_ticks (n) VALUES (1)")
    randomly = random.Random(7)  # noqa: S311 - cut points, not secrets

    async def units(db: Database) -> None:
        for _ in range(UNITS_AT_MOST):
            async with db.transaction() as session:
                await session.execute(insert)
                await asyncio.sleep(0)
        # A swallowed cancel: the loop went on (it did, on asyncmy, until its connect kept
        # cancels out of Python 3.11's wait_for: the suite hung here).
        pytest.fail(f"the loop ran {UNITS_AT_MOST} units after its cancel")

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
