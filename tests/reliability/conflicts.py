"""What the retry tests share: overlapping at a barrier, the ledger, the logged retries.

Two units of work (tests/reliability/test_retries.py) or two requests
(tests/reliability/test_retries_http.py) overlap through an ``asyncio.Barrier`` that only
their first attempts wait on; the tables they conflict on are made by the ``retry_tables``
fixture (tests/reliability/conftest.py), and each retry is logged as a WARNING of the "dbscope"
logger.
"""

import asyncio
import logging

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database

OVERLAP_TIMEOUT = 5.0
BALANCE = "SELECT SUM(amount) FROM rt_ledger"


async def overlap(barrier: asyncio.Barrier) -> None:
    """Wait until the other transaction has reached the same point."""
    async with asyncio.timeout(OVERLAP_TIMEOUT):
        await barrier.wait()


async def read_balance(session: AsyncSession) -> int:
    """The ledger's balance, read in ``session``'s transaction."""
    return int(await session.scalar(text("SELECT COALESCE(SUM(amount), 0) FROM rt_ledger")) or 0)


async def scalar(db: Database, query: str) -> int:
    """The single integer ``query`` returns, read in a unit of work of its own."""
    async with db.transaction() as session:
        return int(await session.scalar(text(query)) or 0)


def retry_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING lines dbscope logged for retries."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "dbscope"
        and record.levelno == logging.WARNING
        and record.getMessage().startswith("Retrying")
    ]
