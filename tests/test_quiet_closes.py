"""A unit cut off mid-statement drops its connection without an error in the log."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database


async def sleeping_rows(session: AsyncSession) -> AsyncIterator[object]:
    """A server-side cursor over one row that takes a second to come."""
    async for row in await session.stream(text("SELECT pg_sleep(1)")):
        yield row


async def test_a_stream_cancelled_mid_fetch_logs_no_error(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelled 0.2 s into its fetch, the stream's connection is dropped, and nothing is
    logged at ERROR (before, on asyncpg: "Exception closing connection", a traceback of the
    rollback SQLAlchemy's close tried on the connection dbscope had closed)."""
    caplog.set_level(logging.WARNING)
    async with Database(postgres_url) as db:
        with anyio.move_on_after(0.2) as scope:
            async with contextlib.aclosing(db.stream(sleeping_rows, read_only=True)) as rows:
                async for _ in rows:
                    pass
        stats = db.stats()
    assert scope.cancelled_caught
    assert (stats.invalidated, stats.checked_out) == (1, 0)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
