"""Connections are checked before use, and pinged only when that can find something.

A connection used moments ago is not pinged; one idle for ``pool_pre_ping_after`` seconds is;
one whose backend the server ended is replaced before use, on every server. Pings are counted
by ``db.stats().pinged``; backends are ended for real from a connection of the test's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import text

from dbscope import ConfigurationError, Database
from tests.helpers import BACKEND_ID, SERVER_BACKENDS, admin, kill


async def backend_id(db: Database) -> int:
    """The server's id for the connection a unit of work gets from the pool."""
    async with db.transaction() as session:
        return int((await session.execute(text(BACKEND_ID[db.engine.dialect.name]))).scalar_one())


async def select_one(db: Database) -> None:
    """One unit of work with one statement."""
    async with db.transaction() as session:
        await session.execute(text("SELECT 1"))


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_connection_used_moments_ago_is_not_pinged(database_url: str) -> None:
    """Back-to-back units on one connection cost no ping at all."""
    async with Database(database_url, pool_size=1, max_overflow=0) as db:
        for _ in range(20):
            await select_one(db)
        assert db.stats().pinged == 0


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_a_connection_idle_past_pool_pre_ping_after_is_pinged(database_url: str) -> None:
    """After ``pool_pre_ping_after`` seconds of rest, the next use pings first."""
    async with Database(database_url, pool_size=1, max_overflow=0, pool_pre_ping_after=0.05) as db:
        await select_one(db)
        await select_one(db)
        assert db.stats().pinged == 0
        await asyncio.sleep(0.1)
        await select_one(db)
        assert db.stats().pinged == 1


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_pool_pre_ping_after_zero_pings_at_every_use(database_url: str) -> None:
    """0 is SQLAlchemy's pre-ping: every use pings, the first after connecting too (its
    connection is the one connect() proved the server with, which may have idled since)."""
    async with Database(database_url, pool_size=1, max_overflow=0, pool_pre_ping_after=0) as db:
        for _ in range(5):
            await select_one(db)
        assert db.stats().pinged == 5


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.parametrize(
    ("ping_after", "rest"),
    [
        # Within the threshold: the driver's socket hears of the hang-up in the event loop.
        pytest.param(60, 0.05, id="seen-by-the-driver"),
        # Past it: where the driver could not tell, the ping finds it.
        pytest.param(0.05, 0.1, id="idle-past-the-threshold"),
    ],
)
async def test_an_ended_backend_is_replaced_before_use(
    database_url: str, ping_after: float, rest: float
) -> None:
    """A backend terminated while its connection rests in the pool is replaced, not used."""
    options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
    async with Database(database_url, pool_pre_ping_after=ping_after, **options) as db:
        before = await backend_id(db)
        async with admin(database_url) as connection:
            await kill(connection, before)
        await asyncio.sleep(rest)
        after = await backend_id(db)
        stats = db.stats()
    assert after != before
    assert (stats.pinged, stats.invalidated) == (1, 1)


@pytest.mark.parametrize("db_backend", ["asyncpg", "sqlite"])
async def test_no_check_when_turned_off_or_on_sqlite(database_url: str, db_backend: str) -> None:
    """``pool_pre_ping=False`` turns the check off; a SQLite file is never checked."""
    options: dict[str, Any] = {"pool_pre_ping": False} if db_backend != "sqlite" else {}
    async with Database(database_url, pool_pre_ping_after=0, **options) as db:
        for _ in range(3):
            await select_one(db)
        assert db.stats().pinged == 0


def test_a_negative_pool_pre_ping_after_is_refused_naming_it() -> None:
    """A negative threshold fails at construction, naming the setting and what it takes."""
    with pytest.raises(ConfigurationError, match="pool_pre_ping_after") as caught:
        Database("postgresql+asyncpg://app:secret@localhost/app", pool_pre_ping_after=-1)
    assert "ping at every use" in str(caught.value)
    assert "secret" not in str(caught.value)
