"""Outages are answered with 503 and Retry-After, never 500 or a hang, and the app recovers.

Every fault is real: the pool is exhausted by a request that holds its connection, the server
becomes unreachable when a TCP proxy in front of it is shut (helpers.TcpProxy), backends are
terminated with ``pg_terminate_backend`` or MariaDB's ``KILL`` from a connection of the test's
own.
"""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any, Literal

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from dbscope._dialects import driver
from tests import helpers

ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.5}


def build_app(db: Database) -> FastAPI:
    """``/query`` runs one query; ``/hold`` writes, then waits for ``app.state.release``."""

    async def query(session: AsyncSession) -> dict[str, int]:
        return {"one": int((await session.execute(text("SELECT 1"))).scalar_one())}

    async def hold_briefly(session: AsyncSession) -> dict[str, int]:
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(0.1)
        return {"one": 1}

    async def hold(session: AsyncSession, then: Literal["query", "commit"]) -> dict[str, str]:
        await session.execute(text("INSERT INTO outage_rows (value) VALUES (1)"))
        backend_id_query = helpers.BACKEND_ID.get(db.url.get_backend_name(), "SELECT NULL")
        app.state.backend_id = (await session.execute(text(backend_id_query))).scalar_one()
        app.state.started.set()
        await app.state.release.wait()
        if then == "query":
            await session.execute(text("SELECT 1"))
        return {"then": then}

    app = helpers.app_with(
        db.session, {"GET /query": query, "GET /hold-briefly": hold_briefly, "POST /hold": hold}
    )

    @app.get("/leased")
    async def leased(connection: Annotated[Any, Depends(db.leased)]) -> dict[str, bool]:
        return {"leased": connection is not None}

    app.state.started = asyncio.Event()
    app.state.release = asyncio.Event()
    app.state.backend_id = None
    return app


@pytest.fixture
async def outage_rows(tables: helpers.Tables) -> None:
    """An empty ``outage_rows`` table for the test."""
    await tables.create("outage_rows", "value INTEGER NOT NULL")


@contextlib.asynccontextmanager
async def the_only_connection_held(
    database_url: str,
) -> AsyncIterator[tuple[Database, httpx.AsyncClient, Callable[[], Awaitable[httpx.Response]]]]:
    """A pool of one connection, held by a ``POST /hold`` request until ``release()``.

    Yields the Database, a client of the app, and ``release``, which lets the holder finish
    and gives its response.
    """
    async with Database(database_url, **ONE_CONNECTION) as db:
        app = build_app(db)
        async with helpers.client_for(app) as client:
            holder = asyncio.create_task(client.post("/hold?then=commit"))
            await asyncio.wait_for(app.state.started.wait(), timeout=10)

            async def release() -> httpx.Response:
                app.state.release.set()
                return await holder

            yield db, client, release


@pytest.mark.usefixtures("outage_rows")
async def test_an_exhausted_pool_answers_503_pool_timeout(database_url: str) -> None:
    """While a request holds the only connection, the next one gets 503 within pool_timeout."""
    async with the_only_connection_held(database_url) as (db, client, release):
        with anyio.fail_after(5):
            response = await client.get("/query")
        held = await release()
        assert db.stats().checked_out == 0
    helpers.assert_unavailable(response, "pool_timeout")
    assert held.status_code == 200


@pytest.mark.usefixtures("outage_rows")
async def test_requests_succeed_again_once_the_pool_has_a_free_connection(
    database_url: str,
) -> None:
    """After the holder of the only connection finishes, the next request gets 200."""
    async with the_only_connection_held(database_url) as (_, client, release):
        refused = await client.get("/query")
        await release()
        after = await client.get("/query")
    assert refused.status_code == 503
    assert after.status_code == 200, after.text


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_an_unreachable_database_answers_503_unreachable(database_url: str) -> None:
    """Once the server cannot be reached after start-up, requests get 503, not 500: those of
    a session, and those of a lease (psycopg and asyncmy raise their own errors there,
    unwrapped)."""
    async with (
        helpers.proxied(database_url) as (proxy, url),
        Database(url, connect_timeout=2) as db,
    ):
        async with helpers.client_for(build_app(db)) as client:
            before = await client.get("/query")
            await proxy.cut()
            with anyio.fail_after(20):
                response = await client.get("/query")
                leased = await client.get("/leased")
        assert db.stats().checked_out == 0
    assert before.status_code == 200
    helpers.assert_unavailable(response, "unreachable")
    helpers.assert_unavailable(leased, "unreachable")
    # Where the database is goes to the log, not to every client (as /readyz keeps it).
    assert response.json()["detail"]["message"] == "The database could not be reached."
    assert f"{proxy.port}" not in response.text


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_the_app_recovers_when_the_database_is_reachable_again(database_url: str) -> None:
    """After an outage, the same app serves requests again without a restart."""
    async with helpers.proxied(database_url) as (proxy, url):
        db = Database(url, connect_timeout=2)
        async with db, helpers.client_for(build_app(db)) as client:
            await client.get("/query")
            await proxy.cut()
            during = await client.get("/query")
            await proxy.start()
            after = await client.get("/query")
    assert during.status_code == 503
    assert after.status_code == 200, after.text


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_requests_succeed_after_every_pooled_backend_is_terminated(
    database_url: str,
) -> None:
    """pg_terminate_backend on every pooled connection costs no failed request: the
    checkout check sees each hang-up the driver has read, and pings (and so replaces) just
    those connections. The requests wait until the driver has read them (a backend leaves
    pg_stat_activity a moment before it closes its socket, and asyncpg reads the close in
    the event loop); one racing the hang-up itself can still fail (docs/configuration.md)."""
    name = f"dbscope-test-outages-{os.getpid()}"
    db = Database(database_url, application_name=name, pool_size=3)
    pooled: list[Any] = []  # the connections the warm-up put back in the pool
    async with db, helpers.client_for(build_app(db)) as client:

        def put_back(dbapi_connection: Any, _: object) -> None:
            if dbapi_connection is not None:  # None: dropped, not put back
                pooled.append(dbapi_connection)

        event.listen(db.engine.sync_engine, "checkin", put_back)
        looks_dead = driver(db.engine.dialect.driver).looks_dead  # type: ignore[union-attr]
        warm = await asyncio.gather(*(client.get("/hold-briefly") for _ in range(3)))
        assert [r.status_code for r in warm] == [200] * 3
        assert db.stats().checked_in == 3
        async with helpers.admin(database_url) as connection:
            terminate = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name"
            )
            terminated = (await connection.execute(text(terminate), {"name": name})).all()
            count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
            await helpers.wait_until_none(connection, count, name=name)
        for _ in range(1000):  # looks until the driver has seen each hang-up
            if all(looks_dead(c.driver_connection) for c in pooled):
                break
            await anyio.sleep(0.01)
        killed = set(pooled)
        assert all(looks_dead(c.driver_connection) for c in killed), "a hang-up never arrived"
        pings = db.stats().pinged
        statuses = [(await client.get("/query")).status_code for _ in range(10)]
        pinged = db.stats().pinged - pings
    assert len(terminated) == len(killed) == 3
    assert statuses == [200] * 10
    assert pinged == 3, "each dead connection was caught by its checkout check"


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
@pytest.mark.parametrize("then", ["query", "commit"])
@pytest.mark.usefixtures("outage_rows")
async def test_a_connection_lost_in_the_middle_of_a_request_answers_503(
    database_url: str, db: Database, then: str
) -> None:
    """A backend killed while the endpoint waits in its transaction gives 503, never 500."""
    app = build_app(db)
    async with helpers.client_for(app) as client:
        response = await helpers.kill_mid_request(
            database_url, app, client.post(f"/hold?then={then}")
        )
    stored = await helpers.count_rows(database_url, "outage_rows")
    assert db.stats().checked_out == 0
    helpers.assert_unavailable(response, "connection_lost")
    assert stored == 0
