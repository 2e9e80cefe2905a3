"""A server that stops answering without closing anything: a frozen host, a NAT or firewall
that dropped the connection. Nothing tells the driver, so only a bound on each wait keeps a
request from hanging: the ping of an idle connection, and each connection's close.

The silence is made for real by a TCP proxy in front of the server that stops carrying data
on the connections it holds and answers none it accepts (helpers.TcpProxy).
"""

from typing import Any

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from tests import helpers

# A wait longer than any bound under test: past it, the test fails instead of hanging.
NEVER = 30
SETTINGS: dict[str, Any] = {
    "pool_size": 1,
    "max_overflow": 0,
    "connect_timeout": 1,
    "pool_pre_ping_after": 0.2,
}


async def query(session: AsyncSession) -> dict[str, int]:
    return {"one": int((await session.execute(text("SELECT 1"))).scalar_one())}


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_an_idle_connection_whose_server_went_silent_answers_503_not_a_hang(
    database_url: str,
) -> None:
    """Its ping goes unanswered: the connection is given up after connect_timeout, a new
    one cannot be opened, and the request answers 503; the app recovers with the server."""
    async with (
        helpers.proxied(database_url) as (proxy, url),
        Database(url, **SETTINGS) as db,
        helpers.client_for(helpers.app_with(db.session, {"GET /q": query})) as client,
    ):
        before = await client.get("/q")
        proxy.frozen = proxy.silent = True
        await anyio.sleep(0.3)  # idle past pool_pre_ping_after: pinged at checkout
        with anyio.fail_after(NEVER):
            during = await client.get("/q")
        pinged = db.stats().pinged
        proxy.frozen = proxy.silent = False
        after = await client.get("/q")
    assert before.status_code == 200
    helpers.assert_unavailable(during, "unreachable")
    assert pinged == 1
    assert after.status_code == 200, after.text


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_the_connection_connect_opened_is_pinged_when_first_used_after_idling(
    database_url: str,
) -> None:
    """connect() proves the server with a pooled connection before the check listens: that
    connection is pinged once idle all the same."""
    async with helpers.proxied(database_url) as (_, url), Database(url, **SETTINGS) as db:
        await anyio.sleep(0.3)
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        assert db.stats().pinged == 1


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_dispose_returns_when_the_server_went_silent(database_url: str) -> None:
    """The app's shutdown closes its pooled connections within a bound, not when the
    server answers (asyncpg's close waited for ever)."""
    async with helpers.proxied(database_url) as (proxy, url):
        db = Database(url, **SETTINGS)
        await db.connect()
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        proxy.frozen = proxy.silent = True
        with anyio.fail_after(NEVER):
            await db.dispose()
