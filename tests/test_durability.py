"""Durability one can see and choose, on a single server: synchronous_commit per unit, the
durability report, and a read-only refusal that stays the application's own.

The same on a Patroni cluster, with a synchronous standby, a demoted primary and a warning
that has cause to be given, is in test_failover.py.

No ``from __future__ import annotations``: the endpoint uses a ``Session`` alias built inside
a function.
"""

import logging
from typing import Annotated, Any, get_args

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database, UnitOptions
from dbscope._dialects import SynchronousCommit
from tests import helpers

LEVELS: tuple[SynchronousCommit, ...] = get_args(SynchronousCommit)
ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}


@pytest.mark.parametrize("level", LEVELS)
async def test_a_unit_commits_at_the_synchronous_commit_it_asks_for(
    postgres_url: str, level: SynchronousCommit
) -> None:
    """transaction(synchronous_commit=level): SET LOCAL, so the unit runs at that level."""
    async with Database(postgres_url) as db, db.transaction(synchronous_commit=level) as session:
        seen = await session.scalar(text("SHOW synchronous_commit"))
    assert seen == level


async def test_the_synchronous_commit_ends_with_its_unit(postgres_url: str) -> None:
    """The next unit on the same pooled connection is back at the server's level."""
    async with Database(postgres_url, **ONE_CONNECTION) as db:
        async with db.transaction() as session:
            default = await session.scalar(text("SHOW synchronous_commit"))
        async with db.transaction(synchronous_commit="off") as session:
            first = await session.scalar(text("SELECT pg_backend_pid()"))
        async with db.transaction() as session:
            after = await session.scalar(text("SHOW synchronous_commit"))
            second = await session.scalar(text("SELECT pg_backend_pid()"))
    assert default != "off"
    assert first == second
    assert after == default


async def test_a_request_commits_at_its_dependencys_synchronous_commit(postgres_url: str) -> None:
    """session_with(synchronous_commit="remote_apply") runs the request's unit at that level."""
    db = Database(postgres_url)
    app = FastAPI()
    Session = Annotated[AsyncSession, Depends(db.session_with(synchronous_commit="remote_apply"))]

    @app.get("/level")
    async def level(session: Session) -> dict[str, str]:
        return {"level": str(await session.scalar(text("SHOW synchronous_commit")))}

    async with db, helpers.client_for(app) as client:
        response = await client.get("/level")
    assert response.json() == {"level": "remote_apply"}


@pytest.mark.parametrize("given", ["remote-apply", "ON", "sync", ""])
def test_an_unknown_synchronous_commit_is_refused_naming_it(given: str) -> None:
    """A value that is not a level fails when the options are made, naming it and the levels."""
    with pytest.raises(ConfigurationError) as refused:
        UnitOptions(synchronous_commit=given)  # type: ignore[arg-type]
    assert f"synchronous_commit={given!r}" in str(refused.value)
    assert "'remote_apply', 'on', 'remote_write', 'local', 'off'" in str(refused.value)


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncmy"])
async def test_a_server_without_synchronous_commit_refuses_it(database_url: str) -> None:
    """SQLite and MariaDB refuse the option with the reason, as they refuse a schema."""
    async with Database(database_url) as db:
        with pytest.raises(ConfigurationError, match="it is PostgreSQL's setting; remove it"):
            db.session_with(synchronous_commit="local")
        with pytest.raises(ConfigurationError, match="synchronous_commit='local' is not available"):
            async with db.transaction(synchronous_commit="local"):
                pass


async def test_a_single_server_reports_no_standby_and_no_warning(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A server without standbys: durability "single" in stats() (its repr leaves it out),
    and nothing logged."""
    caplog.set_level(logging.WARNING, logger="dbscope")
    async with Database(postgres_url) as db:
        stats = db.stats()
    durability = stats.durability
    assert "durability" not in repr(stats)
    assert durability is not None
    assert (durability.state, durability.standbys, durability.commits_wait) == ("single", 0, False)
    assert [r for r in caplog.records if "acknowledged writes" in r.getMessage()] == []


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncmy"])
async def test_durability_does_not_apply_without_postgresql(database_url: str) -> None:
    """SQLite and MariaDB: no reading, and the repr leaves the field out."""
    async with Database(database_url) as db:
        stats = db.stats()
    assert stats.durability is None
    assert "durability" not in repr(stats)


async def test_a_write_refused_by_a_read_only_role_on_a_primary_stays_an_error(
    postgres_url: str,
) -> None:
    """default_transaction_read_only on a primary (the server says it is no standby): the
    refusal is the application's error, as before, and the connection is kept."""
    read_only: dict[str, Any] = (
        {"server_settings": {"default_transaction_read_only": "on"}}
        if postgres_url.startswith("postgresql+asyncpg")
        else {"options": "-c default_transaction_read_only=on"}
    )
    async with Database(postgres_url, connect_args=read_only) as db:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            async with db.transaction() as session:
                await session.execute(text("CREATE TEMPORARY TABLE refused (id int)"))
        invalidated = db.stats().invalidated
    assert invalidated == 0
