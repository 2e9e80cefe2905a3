"""db.health() behind PgBouncer in transaction mode: busy is not down.

The probe connects to PgBouncer at once, then waits in PgBouncer's own line for a server
connection. With the app's transactions holding every one of PgBouncer's (``default_pool_size
= 10``), it timed out, and the readiness probe failed: every instance behind a busy bouncer
would have been pulled out at once, the cascade a saturated pool's ``warn`` exists to avoid.
"""

import asyncio

import pytest
from sqlalchemy import text

from dbscope import Database
from tests.conftest import POSTGRES_DRIVERS, POSTGRES_URL
from tests.pgbouncer_service import Bouncers

BUSY = 12  # more transactions than PgBouncer's 10 server connections


@pytest.mark.parametrize("driver", POSTGRES_DRIVERS)
async def test_a_bouncer_busy_with_the_apps_transactions_is_warn_not_fail(
    pgbouncer: Bouncers, driver: str
) -> None:
    url = pgbouncer.url("transaction", driver, POSTGRES_URL)
    started = asyncio.Event()
    holding = 0

    async def hold() -> None:
        nonlocal holding
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
            holding += 1
            if holding == 10:
                started.set()
            await session.execute(text("SELECT pg_sleep(2)"))

    async with Database(url, pgbouncer="transaction", pool_size=BUSY, max_overflow=0) as db:
        await db.health(timeout=1, max_age=0)  # the probe's connection, made while idle
        tasks = [asyncio.ensure_future(hold()) for _ in range(BUSY)]
        await asyncio.wait_for(started.wait(), 10)
        busy = await db.health(timeout=0.3, max_age=0)
        await asyncio.gather(*tasks)
        idle = await db.health(timeout=1, max_age=0)
    server = next(check for check in busy.checks if check.measurement == "responseTime")
    assert (server.status, busy.status) == ("warn", "warn"), server.output
    assert "PgBouncer" in (server.output or "")
    assert idle.status == "pass"
