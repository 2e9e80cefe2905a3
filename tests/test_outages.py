"""Outages are answered with 503 and Retry-After, never 500 or a hang, and the app recovers.

Every fault is real: the pool is exhausted by a request that holds its connection, the server
becomes unreachable when a TCP proxy in front of it is shut, backends are terminated with
``pg_terminate_backend`` or MariaDB's ``KILL`` from a connection of the test's own.

No ``from __future__ import annotations``: the endpoints use a ``Session`` alias built inside
a function.
"""

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from dbscope import Database
from tests.helpers import admin, client_for

SERVER_BACKENDS = ["asyncpg", "psycopg", "asyncmy"]


def build_app(db: Database) -> FastAPI:
    """``/query`` runs one query; ``/hold`` writes, then waits for ``app.state.release``."""
    app = FastAPI()
    app.state.started = asyncio.Event()
    app.state.release = asyncio.Event()
    app.state.backend_id = None
    Session = Annotated[AsyncSession, Depends(db.session)]
    backend_id_query = {
        "postgresql": "SELECT pg_backend_pid()",
        "mysql": "SELECT CONNECTION_ID()",
        "sqlite": "SELECT NULL",
    }[db.url.get_backend_name()]

    @app.get("/query")
    async def query(session: Session) -> dict[str, int]:
        return {"one": int((await session.execute(text("SELECT 1"))).scalar_one())}

    @app.get("/hold-briefly")
    async def hold_briefly(session: Session) -> dict[str, int]:
        await session.execute(text("SELECT 1"))
        await asyncio.sleep(0.1)
        return {"one": 1}

    @app.post("/hold")
    async def hold(session: Session, then: Literal["query", "commit"]) -> dict[str, str]:
        await session.execute(text("INSERT INTO outage_rows (value) VALUES (1)"))
        app.state.backend_id = (await session.execute(text(backend_id_query))).scalar_one()
        app.state.started.set()
        await app.state.release.wait()
        if then == "query":
            await session.execute(text("SELECT 1"))
        return {"then": then}

    return app


def assert_unavailable(response: httpx.Response, cause: str) -> None:
    """``response`` is a 503 with Retry-After and a JSON body naming ``cause``."""
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    detail = response.json()["detail"]
    assert detail["cause"] == cause
    assert isinstance(detail["message"], str)
    assert detail["message"]


@pytest.fixture
async def outage_rows(database_url: str) -> AsyncIterator[None]:
    """An empty ``outage_rows`` table for the test, dropped after it."""
    async with admin(database_url) as connection:
        await connection.execute(text("DROP TABLE IF EXISTS outage_rows"))
        await connection.execute(text("CREATE TABLE outage_rows (value INTEGER NOT NULL)"))
        yield
        await connection.execute(text("DROP TABLE outage_rows"))


async def stored_rows(connection: AsyncConnection) -> int:
    """How many rows ``outage_rows`` holds."""
    return int((await connection.execute(text("SELECT count(*) FROM outage_rows"))).scalar_one())


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a database server.

    ``cut()`` closes the listening socket and every proxied connection, so the server behind
    it is as unreachable as a crashed host: pooled connections die, new ones are refused.
    ``start()`` again listens on the same port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Listen (on the same port as before, if any)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        """Stop listening and close every proxied connection."""
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(upstream_writer)
        await asyncio.gather(
            self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer)
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def proxied(database_url: str) -> AsyncIterator[tuple[TcpProxy, str]]:
    """A running proxy in front of ``database_url``'s server, and the URL through it."""
    url = make_url(database_url)
    proxy = TcpProxy(url.host or "127.0.0.1", url.port or 5432)
    await proxy.start()
    try:
        yield proxy, url.set(port=proxy.port).render_as_string(hide_password=False)
    finally:
        await proxy.cut()


@pytest.mark.usefixtures("outage_rows")
async def test_an_exhausted_pool_answers_503_pool_timeout(database_url: str) -> None:
    """While a request holds the only connection, the next one gets 503 within pool_timeout."""
    options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.5}
    async with Database(database_url, **options) as db:
        app = build_app(db)
        async with client_for(app) as client:
            holder = asyncio.create_task(client.post("/hold?then=commit"))
            await asyncio.wait_for(app.state.started.wait(), timeout=10)
            with anyio.fail_after(5):
                response = await client.get("/query")
            app.state.release.set()
            held = await holder
        assert db.stats().checked_out == 0
    assert_unavailable(response, "pool_timeout")
    assert held.status_code == 200


@pytest.mark.usefixtures("outage_rows")
async def test_requests_succeed_again_once_the_pool_has_a_free_connection(
    database_url: str,
) -> None:
    """After the holder of the only connection finishes, the next request gets 200."""
    options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.5}
    async with Database(database_url, **options) as db:
        app = build_app(db)
        async with client_for(app) as client:
            holder = asyncio.create_task(client.post("/hold?then=commit"))
            await asyncio.wait_for(app.state.started.wait(), timeout=10)
            refused = await client.get("/query")
            app.state.release.set()
            await holder
            after = await client.get("/query")
    assert refused.status_code == 503
    assert after.status_code == 200, after.text


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_an_unreachable_database_answers_503_unreachable(database_url: str) -> None:
    """Once the server cannot be reached after start-up, requests get 503, not 500."""
    async with proxied(database_url) as (proxy, url), Database(url, connect_timeout=2) as db:
        async with client_for(build_app(db)) as client:
            before = await client.get("/query")
            await proxy.cut()
            with anyio.fail_after(10):
                response = await client.get("/query")
        assert db.stats().checked_out == 0
    assert before.status_code == 200
    assert_unavailable(response, "unreachable")


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
async def test_the_app_recovers_when_the_database_is_reachable_again(database_url: str) -> None:
    """After an outage, the same app serves requests again without a restart."""
    async with proxied(database_url) as (proxy, url):
        db = Database(url, connect_timeout=2)
        async with db, client_for(build_app(db)) as client:
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
    """pg_terminate_backend on every pooled connection costs no failed request (pre-ping)."""
    name = f"dbscope-test-outages-{os.getpid()}"
    db = Database(database_url, application_name=name, pool_size=3)
    async with db, client_for(build_app(db)) as client:
        warm = await asyncio.gather(*(client.get("/hold-briefly") for _ in range(3)))
        assert [r.status_code for r in warm] == [200] * 3
        assert db.stats().checked_in == 3
        async with admin(database_url) as connection:
            terminate = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name"
            )
            terminated = (await connection.execute(text(terminate), {"name": name})).all()
            count = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
            await wait_until_none(connection, count, name=name)
        statuses = [(await client.get("/query")).status_code for _ in range(10)]
    assert len(terminated) == 3
    assert statuses == [200] * 10


async def wait_until_none(connection: AsyncConnection, count: str, **params: Any) -> None:
    """Wait until the ``count`` query, run on ``connection``, gives 0."""
    with anyio.fail_after(10):
        while True:
            if not (await connection.execute(text(count), params)).scalar_one():
                return
            await asyncio.sleep(0.02)


async def kill(connection: AsyncConnection, backend_id: int) -> None:
    """End the server side of the connection ``backend_id``, and wait until it is gone."""
    if connection.dialect.name == "postgresql":
        await connection.execute(text("SELECT pg_terminate_backend(:id)"), {"id": backend_id})
        count = "SELECT count(*) FROM pg_stat_activity WHERE pid = :id"
    else:
        await connection.execute(text(f"KILL CONNECTION {int(backend_id)}"))
        count = "SELECT count(*) FROM information_schema.processlist WHERE id = :id"
    await wait_until_none(connection, count, id=backend_id)


@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.parametrize("then", ["query", "commit"])
@pytest.mark.usefixtures("outage_rows")
async def test_a_connection_lost_in_the_middle_of_a_request_answers_503(
    database_url: str, then: str
) -> None:
    """A backend killed while the endpoint waits in its transaction gives 503, never 500."""
    async with Database(database_url) as db:
        app = build_app(db)
        async with client_for(app) as client, admin(database_url) as connection:
            request = asyncio.create_task(client.post(f"/hold?then={then}"))
            await asyncio.wait_for(app.state.started.wait(), timeout=10)
            await kill(connection, app.state.backend_id)
            app.state.release.set()
            with anyio.fail_after(10):
                response = await request
            stored = await stored_rows(connection)
        assert db.stats().checked_out == 0
    assert_unavailable(response, "connection_lost")
    assert stored == 0
