"""Fixtures of the reliability tests: the tables the retry tests conflict on, and their log."""

import logging

import pytest
from sqlalchemy import text

from tests.helpers import Tables, admin


@pytest.fixture
async def retry_tables(database_url: str, tables: Tables) -> None:
    """Fresh ``rt_*`` tables: a ledger of 100, two doctors on call, two lockable rows."""
    await tables.create("rt_ledger", "amount INTEGER NOT NULL")
    await tables.create("rt_doctors", "id INTEGER PRIMARY KEY, on_call INTEGER NOT NULL")
    await tables.create("rt_locks", "id INTEGER PRIMARY KEY, hits INTEGER NOT NULL")
    async with admin(database_url) as connection:
        await connection.execute(text("INSERT INTO rt_ledger (amount) VALUES (100)"))
        await connection.execute(text("INSERT INTO rt_doctors (id, on_call) VALUES (1, 1), (2, 1)"))
        await connection.execute(text("INSERT INTO rt_locks (id, hits) VALUES (1, 0), (2, 0)"))


@pytest.fixture
def retry_warnings(caplog: pytest.LogCaptureFixture) -> None:
    """Capture the WARNING lines of the "dbscope" logger, where retries are logged."""
    caplog.set_level(logging.WARNING, logger="dbscope")
