"""The example bank (examples/bank) on its own: a transfer moves money and writes the
ledger in one unit of work, and each refusal leaves nothing behind. Its run through a
failover is test_failover_bank.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from examples.bank.app import Base, create_app, open_accounts
from sqlalchemy import text

from dbscope import Database
from tests import helpers

pytestmark = pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])


@pytest.fixture(autouse=True)
async def no_bank_left(database_url: str) -> AsyncIterator[None]:
    """The bank's tables are dropped after each test."""
    yield
    async with helpers.admin(database_url) as connection:
        await connection.run_sync(Base.metadata.drop_all)


async def balances(db: Database) -> list[int]:
    """Each account's balance, by account."""
    async with db.transaction(read_only=True) as session:
        rows = await session.scalars(text("SELECT balance FROM bank_accounts ORDER BY id"))
        return list(rows)


async def ledger(db: Database) -> int:
    """How many transfers the ledger holds."""
    async with db.transaction(read_only=True) as session:
        return int(await session.scalar(text("SELECT count(*) FROM bank_ledger")) or 0)


async def send(client: httpx.AsyncClient, name: str, source: int, target: int, amount: int) -> int:
    """POST /transfers; the status."""
    body = {"id": name, "source": source, "target": target, "amount": amount}
    return (await client.post("/transfers", json=body)).status_code


async def test_a_transfer_moves_money_and_is_in_the_ledger(database_url: str) -> None:
    """201: one account debited, the other credited, one ledger row; the total unchanged."""
    async with Database(database_url) as db, helpers.client_for(create_app(db)) as client:
        await open_accounts(db, accounts=3, balance=100)
        assert await send(client, "t1", 0, 2, 30) == 201
        total = (await client.get("/balance")).json()
        assert await balances(db) == [70, 100, 130]
        assert await ledger(db) == 1
    assert total == {"total": 300, "accounts": 3}


async def test_refused_transfers_leave_nothing_behind(database_url: str) -> None:
    """Insufficient funds, the same transfer again, an unknown account, one account twice:
    each refused, no balance changed, no ledger row added."""
    async with Database(database_url) as db, helpers.client_for(create_app(db)) as client:
        await open_accounts(db, accounts=2, balance=100)
        assert await send(client, "t1", 0, 1, 10) == 201
        statuses = [
            await send(client, "t2", 0, 1, 1000),
            await send(client, "t1", 0, 1, 10),
            await send(client, "t3", 0, 7, 10),
            await send(client, "t4", 1, 1, 10),
        ]
        assert await balances(db) == [90, 110]
        assert await ledger(db) == 1
    assert statuses == [409, 409, 404, 422]
