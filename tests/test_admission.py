"""The wait line in front of the pool: first come, first served, and bounded when asked.

The pool is exhausted for real: a unit of work holds its connection (``pool_size=1,
max_overflow=0``) while others queue behind it, on every backend.
"""

import asyncio
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import NullPool

import dbscope.otel
from dbscope import ConfigurationError, Database, DatabaseUnavailableError
from dbscope.fastapi._early_retries import EarlyRetries
from tests.helpers import app_with, client_for
from tests.otel_readings import metered as metered_sdk

ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}


class Holder:
    """A unit of work that keeps the pool's only connection until released."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def hold(self) -> None:
        """Check the connection out, say so, and keep it until ``release`` is set."""
        async with self.db.transaction() as session:
            await session.execute(text("SELECT 1"))
            self.holding.set()
            await self.release.wait()


async def until_waiting(db: Database, count: int) -> None:
    """Wait until ``count`` checkouts wait in line."""
    with anyio.fail_after(10):
        while True:
            if db.stats().waiting == count:
                return
            await asyncio.sleep(0.005)


async def served_in_order(db: Database, label: str, order: list[str]) -> None:
    """A unit of work that notes when it got its connection."""
    async with db.transaction() as session:
        await session.execute(text("SELECT 1"))
        order.append(label)


async def test_waiters_are_served_first_come_first_served(database_url: str) -> None:
    """A connection handed back goes to the longest waiter, never to a request just arrived.

    The newcomer is started by the pool's own ``checkin`` event as the holder hands its
    connection back: the moment at which SQLAlchemy's plain asyncio pool lets it overtake.
    """
    async with Database(database_url, **ONE_CONNECTION) as db:
        holder = Holder(db)
        order: list[str] = []
        newcomers: list[asyncio.Future[None]] = []

        def newcomer_arrives(*_: object) -> None:
            if holder.release.is_set() and not newcomers:
                newcomers.append(asyncio.ensure_future(served_in_order(db, "newcomer", order)))

        event.listen(db.engine.sync_engine, "checkin", newcomer_arrives)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(holder.hold)
            await holder.holding.wait()
            for index in range(5):
                tasks.start_soon(served_in_order, db, f"waiter {index}", order)
                await until_waiting(db, index + 1)
            holder.release.set()
        await asyncio.gather(*newcomers)
        stats = db.stats()
    assert order == [f"waiter {index}" for index in range(5)] + ["newcomer"]
    assert (stats.checked_out, stats.waiting) == (0, 0)


async def test_a_full_line_fails_at_once_while_the_waiters_keep_their_place(
    database_url: str,
) -> None:
    """With pool_max_waiters=2, a third waiter gets pool_timeout at once; the two are served."""
    async with Database(database_url, pool_max_waiters=2, pool_timeout=30, **ONE_CONNECTION) as db:
        holder = Holder(db)
        order: list[str] = []
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(holder.hold)
            await holder.holding.wait()
            for index in range(2):
                tasks.start_soon(served_in_order, db, f"waiter {index}", order)
            await until_waiting(db, 2)
            with pytest.raises(DatabaseUnavailableError) as caught:
                await served_in_order(db, "turned away", order)
            waiting_after_refusal = db.stats().waiting
            holder.release.set()
        stats = db.stats()
    assert caught.value.cause == "pool_timeout"
    assert "pool_max_waiters=2" in str(caught.value)
    assert waiting_after_refusal == 2
    assert order == ["waiter 0", "waiter 1"]
    assert (stats.checked_out, stats.waiting) == (0, 0)


async def test_zero_waiters_means_an_exhausted_pool_answers_at_once(database_url: str) -> None:
    """pool_max_waiters=0: nobody waits; a free connection is still taken."""
    async with Database(database_url, pool_max_waiters=0, pool_timeout=30, **ONE_CONNECTION) as db:
        await served_in_order(db, "alone", [])
        holder = Holder(db)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(holder.hold)
            await holder.holding.wait()
            with pytest.raises(DatabaseUnavailableError, match="pool_max_waiters=0"):
                await served_in_order(db, "turned away", [])
            holder.release.set()
        await served_in_order(db, "after", [])
        assert db.stats().checked_out == 0


async def test_a_waiter_that_times_out_or_is_cancelled_leaves_the_line(database_url: str) -> None:
    """pool_timeout still bounds each wait; a cancelled waiter gives its place up."""
    async with Database(database_url, pool_timeout=0.2, **ONE_CONNECTION) as db:
        holder = Holder(db)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(holder.hold)
            await holder.holding.wait()
            with pytest.raises(DatabaseUnavailableError) as caught:
                await served_in_order(db, "timed out", [])
            cancelled = asyncio.ensure_future(served_in_order(db, "cancelled", []))
            await until_waiting(db, 1)
            cancelled.cancel()
            with pytest.raises(asyncio.CancelledError):
                await cancelled
            waiting = db.stats().waiting
            holder.release.set()
        order: list[str] = []
        for label in ("next", "and next"):
            await served_in_order(db, label, order)
        stats = db.stats()
    assert caught.value.cause == "pool_timeout"
    assert waiting == 0
    assert order == ["next", "and next"]
    assert (stats.checked_out, stats.waiting) == (0, 0)


def build_app(db: Database, holder: Holder) -> FastAPI:
    """``/hold`` keeps the connection until released; ``/query`` runs one statement."""

    async def hold(session: AsyncSession) -> dict[str, str]:
        await session.execute(text("SELECT 1"))
        holder.holding.set()
        await holder.release.wait()
        return {"status": "held"}

    async def query(session: AsyncSession) -> dict[str, int]:
        return {"value": int((await session.execute(text("SELECT 1"))).scalar_one())}

    return app_with(db.session, {"GET /hold": hold, "GET /query": query})


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_a_request_beyond_the_line_answers_503_at_once(database_url: str) -> None:
    """Over HTTP semantics: the excess request gets 503 with Retry-After; the waiter 200."""
    async with Database(database_url, pool_max_waiters=1, pool_timeout=30, **ONE_CONNECTION) as db:
        holder = Holder(db)
        async with client_for(build_app(db, holder)) as client:
            held = asyncio.ensure_future(client.get("/hold"))
            await holder.holding.wait()
            waiter = asyncio.ensure_future(client.get("/query"))
            await until_waiting(db, 1)
            turned_away = await client.get("/query")
            holder.release.set()
            responses = [await held, await waiter]
    assert turned_away.status_code == 503
    assert turned_away.headers["Retry-After"] in ("1", "2")
    assert turned_away.json()["detail"]["cause"] == "pool_timeout"
    assert "pool_max_waiters=1" in turned_away.json()["detail"]["message"]
    assert [response.status_code for response in responses] == [200, 200]


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_requests_refused_together_are_told_to_come_back_at_different_times(
    database_url: str,
) -> None:
    """Retry-After of the requests a full line refuses spreads over 1 and 2 s, so that a crowd
    refused at once does not return at once. Forty refusals all alike would happen once in
    half a trillion runs."""
    async with Database(database_url, pool_max_waiters=0, pool_timeout=30, **ONE_CONNECTION) as db:
        holder = Holder(db)
        app = build_app(db, holder)
        async with client_for(app) as client:
            held = asyncio.ensure_future(client.get("/hold"))
            await holder.holding.wait()
            refused = []
            for port in range(40):  # forty clients, each refused once
                async with client_at(app, port) as other:
                    refused.append(await other.get("/query"))
            holder.release.set()
            await held
    assert {response.status_code for response in refused} == {503}
    assert {response.headers["Retry-After"] for response in refused} == {"1", "2"}


def client_at(app: FastAPI, port: int) -> httpx.AsyncClient:
    """An in-process client on a connection of its own: ``127.0.0.2:<port>`` to the app."""
    transport = httpx.ASGITransport(app, client=("127.0.0.2", port))
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_a_client_that_comes_back_before_its_retry_after_gets_its_503_late(
    database_url: str,
) -> None:
    """A client refused for a full line that asks again at once is held until its Retry-After
    has passed and answered 503 without asking the pool; its next request runs as any other;
    another client is refused at once all the same."""
    options: dict[str, Any] = {"pool_max_waiters": 0, "pool_timeout": 30, **ONE_CONNECTION}
    with metered_sdk() as sdk:
        async with Database(database_url, **options) as db:
            dbscope.otel.instrument(db, meter_provider=sdk.provider)
            holder = Holder(db)
            app = build_app(db, holder)
            early, other = client_at(app, 1), client_at(app, 2)
            async with client_for(app) as client, early, other:
                held = asyncio.ensure_future(client.get("/hold"))
                await holder.holding.wait()
                first = await early.get("/query")
                again = asyncio.ensure_future(early.get("/query"))
                someone_else = await other.get("/query")
                late = await again  # the line is still full: it would have been refused too
                holder.release.set()
                served = await held
                next_one = await early.get("/query")
                stats, readings = db.stats(), sdk.read()
    assert [first.status_code, someone_else.status_code, late.status_code] == [503, 503, 503]
    assert "asked again before the Retry-After" in late.json()["detail"]["message"]
    assert late.headers["Retry-After"] == "1"
    assert stats.refused == 2  # the first and someone else's: the early retry never asked
    assert readings.value("dbscope.pool.held_early_retries", db.name) == stats.held == 1
    assert [served.status_code, next_one.status_code] == [200, 200]


async def test_a_client_that_waited_out_its_retry_after_is_not_held() -> None:
    """Coming back after the Retry-After it was given, a client is not held; another client
    never was; a refusal remembered once is forgotten when its client returns."""
    holds: list[None] = []
    early = EarlyRetries(lambda: holds.append(None))
    scope = {"client": ("127.0.0.1", 5000)}
    early.refused(scope, 0.01)
    await asyncio.sleep(0.02)
    assert not await early.hold(scope)
    assert not await early.hold({"client": ("127.0.0.1", 5001)})
    assert not await early.hold({"client": None})
    early.refused(scope, 30)
    early.refused({"client": ("127.0.0.1", 5002)}, 30)
    assert holds == []
    assert len(early._until) == 2


async def test_the_refused_clients_remembered_are_bounded() -> None:
    """Beyond max_clients, the oldest refused client is forgotten (and so never held)."""
    holds: list[None] = []
    early = EarlyRetries(lambda: holds.append(None), max_clients=3)
    for port in range(5):
        early.refused({"client": ("127.0.0.1", port)}, 30)
    assert not await early.hold({"client": ("127.0.0.1", 0)})
    assert holds == []
    assert list(early._until) == [("127.0.0.1", port) for port in range(2, 5)]


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"pool_max_waiters": -1}, "pool_max_waiters"),
        ({"pool_max_waiters": 5, "poolclass": NullPool}, "pool_max_waiters=5"),
    ],
)
def test_a_wrong_pool_max_waiters_is_refused_naming_it(options: dict[str, Any], named: str) -> None:
    """A negative line, or a line with a pool of the user's own, fails at construction."""
    with pytest.raises(ConfigurationError, match=named) as caught:
        Database("postgresql+asyncpg://app:secret@localhost/app", **options)
    assert "secret" not in str(caught.value)
