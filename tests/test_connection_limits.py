"""A server at its connection limit: named for what it is, waited out, and no readiness lost.

The limit is real and of the test's own: a PostgreSQL role with ``CONNECTION LIMIT 3``
(SQLSTATE 53300, "too many connections for role"), a MariaDB user with
``MAX_USER_CONNECTIONS 3`` (error 1226). Another client reaches it by holding connections.
"""

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from sqlalchemy.pool import NullPool

from dbscope import Database, DatabaseUnavailableError
from tests import helpers

LIMIT = 3
# Larger than the limit: the pool may grow past what the server lets it have.
LARGE_POOL: dict[str, Any] = {"pool_size": 5, "max_overflow": 5, "pool_timeout": 10}


@pytest.fixture
async def limited_url(database_url: str) -> AsyncIterator[str]:
    """``database_url`` as a user of the test's own that may hold LIMIT connections at once."""
    name = f"dbscope_limited_{uuid.uuid4().hex[:8]}"
    url = make_url(database_url)
    async with helpers.admin(database_url) as admin:
        if url.get_backend_name() == "postgresql":
            await admin.execute(text(f"CREATE ROLE {name} LOGIN CONNECTION LIMIT {LIMIT}"))
        else:
            user = f"'{name}'@'{url.host}'"
            await admin.execute(text(f"CREATE USER {user} WITH MAX_USER_CONNECTIONS {LIMIT}"))
            await admin.execute(text(f"GRANT ALL ON `{url.database}`.* TO {user}"))
    try:
        yield url.set(username=name, password=None).render_as_string(hide_password=False)
    finally:
        async with helpers.admin(database_url) as admin:
            await _end_sessions_of(admin, name)
            if url.get_backend_name() == "postgresql":
                await admin.execute(text(f"DROP ROLE {name}"))
            else:
                await admin.execute(text(f"DROP USER '{name}'@'{url.host}'"))


async def _end_sessions_of(admin: AsyncConnection, user: str) -> None:
    if admin.dialect.name == "postgresql":
        query = "SELECT pid FROM pg_stat_activity WHERE usename = :user"
    else:
        query = "SELECT id FROM information_schema.processlist WHERE user = :user"
    for backend_id in (await admin.execute(text(query), {"user": user})).scalars().all():
        await helpers.kill(admin, backend_id)


@contextlib.asynccontextmanager
async def held(url: str, count: int) -> AsyncIterator[None]:
    """``count`` connections of ``url``'s user held by another client, outside any pool."""
    engine = create_async_engine(url, poolclass=NullPool)
    async with contextlib.AsyncExitStack() as stack:
        for _ in range(count):
            connection = await stack.enter_async_context(engine.connect())
            await connection.execute(text("SELECT 1"))
        yield
    await engine.dispose()


async def _sessions_of(database_url: str, user: str) -> int:
    async with helpers.admin(database_url) as admin:
        if admin.dialect.name == "postgresql":
            query = "SELECT count(*) FROM pg_stat_activity WHERE usename = :user"
        else:
            query = "SELECT count(*) FROM information_schema.processlist WHERE user = :user"
        return int(await admin.scalar(text(query), {"user": user}) or 0)


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_pool_larger_than_the_connection_limit_serves_every_unit_in_turn(
    limited_url: str, database_url: str
) -> None:
    """Units beyond what the server lets the pool have wait for the pool's own connections."""
    async with Database(limited_url, **LARGE_POOL) as db:

        async def unit() -> None:
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
                await asyncio.sleep(0.05)

        await asyncio.gather(*(unit() for _ in range(12)))
        assert db.stats().checked_out == 0
        user = make_url(limited_url).username
        assert user is not None
        assert await _sessions_of(database_url, user) <= LIMIT


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_connect_at_the_connection_limit_names_the_limit(limited_url: str) -> None:
    """connect() says a connection limit is reached, not that the server may be down."""
    async with held(limited_url, LIMIT):
        db = Database(limited_url)
        with pytest.raises(DatabaseUnavailableError) as raised:
            await db.connect()
    message = str(raised.value)
    assert "a connection limit is reached" in message
    assert "check that the server is running" not in message
    assert raised.value.public_message == (
        "The database refused a new connection: a connection limit is reached."
    )


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_readiness_warns_at_the_connection_limit_while_the_pool_holds_connections(
    limited_url: str,
) -> None:
    """The probe refused for the limit, with connections in the pool, is busy: warn."""
    async with Database(limited_url, **LARGE_POOL) as db, held(limited_url, LIMIT - 1):
        health = await db.health()
    assert health.status == "warn", health
    (server,) = [check for check in health.checks if check.component == "database"]
    assert server.output is not None
    assert "connection limit is reached" in server.output


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_request_refused_for_the_connection_limit_is_a_503_that_names_it(
    limited_url: str,
) -> None:
    """With none of the pool's connections left and the limit held, 503 naming the limit;
    served again once the limit frees, with nothing leaked."""
    db = Database(limited_url, **LARGE_POOL)

    async def query(session: AsyncSession) -> dict[str, int]:
        return {"one": int((await session.execute(text("SELECT 1"))).scalar_one())}

    app = helpers.app_with(db.session, {"GET /query": query})
    async with db, helpers.client_for(app) as client:
        await db.engine.dispose()  # the pool holds none of its own
        async with held(limited_url, LIMIT):
            refused = await client.get("/query")
        helpers.assert_unavailable(refused, "unreachable")
        assert "connection limit is reached" in refused.json()["detail"]["message"]
        assert (await client.get("/query")).status_code == 200
        assert db.stats().checked_out == 0


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_unit_that_waits_out_pool_timeout_at_the_connection_limit_says_why(
    limited_url: str,
) -> None:
    """No connection of the pool's back within pool_timeout: a pool_timeout naming the limit."""
    options = {**LARGE_POOL, "pool_timeout": 0.3}
    async with Database(limited_url, **options) as db:
        async with db.transaction() as holding, held(limited_url, LIMIT - 1):
            await holding.execute(text("SELECT 1"))
            with pytest.raises(DatabaseUnavailableError) as raised:
                async with db.transaction() as session:
                    await session.execute(text("SELECT 1"))
        assert db.stats().timeouts == 1
    assert raised.value.cause == "pool_timeout"
    assert "a connection limit is reached" in str(raised.value)
