"""A request whose client hung up while it waited in line is not run when its turn comes.

Served by uvicorn over real HTTP in the test's event loop (tests/documented.py's ``served``):
the pool's only connection is held by one request (``pool_size=1, max_overflow=0``), a second
waits in line, its client closes the socket, and then the connection is handed back. The
hung-up request must not reach the database; a request still waiting behind it, and work the
request started in a task of its own, must.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import anyio
import httpx
import pytest
import uvicorn
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import dbscope.otel
from dbscope import Database
from tests.documented import served
from tests.helpers import Tables, count_rows
from tests.otel_readings import metered

ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
INSERT = text("INSERT INTO ab_rows (value) VALUES (:value)")


class NoteStatuses:
    """Notes each response's status as the app sends it, heard by the client or not.

    A pure ASGI middleware, which hands the server's ``receive`` on as it is: Starlette's
    ``BaseHTTPMiddleware`` (``@app.middleware("http")``) wraps it, and hides from dbscope
    whether the client hung up (docs/fastapi.md).
    """

    def __init__(self, app: ASGIApp, statuses: list[int]) -> None:
        self.app = app
        self.statuses = statuses

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def noting(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.statuses.append(message["status"])
            await send(message)

        await self.app(scope, receive, noting)


class Line:
    """An app whose ``/hold`` keeps the only connection until released, over real HTTP."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.leased: list[int] = []
        self.started: list[asyncio.Task[None]] = []
        self.statuses: list[int] = []  # what the app answered, heard by the client or not
        self.app = self._build()

    def _build(self) -> FastAPI:
        db = self.db
        app = FastAPI(lifespan=db.lifespan)
        Session = Annotated[AsyncSession, Depends(db.session)]

        @app.get("/hold")
        async def hold(session: Session) -> dict[str, str]:
            await session.execute(text("SELECT 1"))
            self.holding.set()
            await self.release.wait()
            return {"held": "yes"}

        @app.post("/rows/{value}")
        async def insert(value: int, session: Session) -> dict[str, int]:
            await session.execute(INSERT, {"value": value})
            return {"value": value}

        @app.post("/leased/{value}")
        async def leased(value: int, connection: Annotated[Any, Depends(db.leased)]) -> None:
            self.leased.append(value)

        @app.post("/started/{value}")
        async def started(value: int, session: Session) -> None:
            # Work the request (a unit of its own, not yet connected) hands to a task of its
            # own, which inherits its context; then the request waits on.
            self.started.append(asyncio.create_task(self._insert_alone(value)))
            await self.release.wait()

        app.add_middleware(NoteStatuses, statuses=self.statuses)
        return app

    async def _insert_alone(self, value: int) -> None:
        async with self.db.transaction() as session:
            await session.execute(INSERT, {"value": value})


async def until(condition: Any) -> None:
    """Wait until ``condition()`` holds (10 s at most)."""
    with anyio.fail_after(10):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


async def hang_up_while_waiting(
    line: Line, server: uvicorn.Server, base_url: str, route: str
) -> None:
    """Send ``POST route``, wait until it waits in line, then close the socket unanswered."""
    port = int(base_url.rsplit(":", 1)[1])
    waiting = line.db.stats().waiting
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {route} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n".encode())
    await writer.drain()
    await until(lambda: line.db.stats().waiting == waiting + 1)
    connections = len(server.server_state.connections)
    writer.close()
    await writer.wait_closed()
    await until(lambda: len(server.server_state.connections) == connections - 1)


async def served_behind(line: Line, base_url: str, route: str) -> int:
    """Send ``POST route`` behind the gone client's request, hand the connection back, and
    give the status it got."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        behind = asyncio.create_task(client.post(route))
        await until(lambda: line.db.stats().waiting == 2)
        line.release.set()
        return (await behind).status_code


@asynccontextmanager
async def one_connection_line(
    database_url: str, **options: Any
) -> AsyncIterator[tuple[Line, str, Any]]:
    """The app served with its only connection held; yields it, its URL and the server.
    ``options`` as for Database."""
    line = Line(Database(database_url, **ONE_CONNECTION, **options))
    async with (
        served(line.app) as (base_url, server),
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        holder = asyncio.create_task(client.get("/hold"))
        await line.holding.wait()
        try:
            yield line, base_url, server
        finally:
            line.release.set()
            assert (await holder).status_code == 200


async def test_a_request_whose_client_hung_up_in_line_is_not_run(
    database_url: str, tables: Tables, caplog: pytest.LogCaptureFixture
) -> None:
    """The hung-up request's INSERT never runs, its answer is 499 without a traceback; the
    one waiting behind it runs."""
    await tables.create("ab_rows", "value INTEGER NOT NULL")
    caplog.set_level(logging.WARNING, logger="dbscope")
    with metered() as sdk:
        async with one_connection_line(database_url) as (line, base_url, server):
            dbscope.otel.instrument(line.db, meter_provider=sdk.provider)
            await hang_up_while_waiting(line, server, base_url, "/rows/1")
            assert await served_behind(line, base_url, "/rows/2") == 200
            stats, readings = line.db.stats(), sdk.read()
    assert await count_rows(database_url, "ab_rows WHERE value = 1") == 0
    assert await count_rows(database_url, "ab_rows WHERE value = 2") == 1
    assert (stats.abandoned, stats.waiting, stats.timeouts) == (1, 0, 0)
    assert readings.value("dbscope.pool.abandoned", line.db.name) == 1
    assert sorted(line.statuses) == [200, 200, 499]  # /hold, /rows/2; the gone client's
    assert all(record.exc_info is None for record in caplog.records)  # no traceback
    assert all(record.levelno < logging.ERROR for record in caplog.records)


async def test_a_client_that_hung_up_in_line_keeps_no_live_client_out_of_a_full_line(
    database_url: str, tables: Tables
) -> None:
    """pool_max_waiters=1, and the one waiting request's client hung up: it will not be served,
    so the next request waits in its place and is served, not refused at once with a 503."""
    await tables.create("ab_rows", "value INTEGER NOT NULL")
    async with one_connection_line(database_url, pool_max_waiters=1) as (line, base_url, server):
        await hang_up_while_waiting(line, server, base_url, "/rows/1")
        assert await served_behind(line, base_url, "/rows/2") == 200
        stats = line.db.stats()
    assert (stats.abandoned, stats.refused) == (1, 0)
    assert await count_rows(database_url, "ab_rows WHERE value = 2") == 1


async def test_a_leased_request_whose_client_hung_up_in_line_is_not_run(
    database_url: str,
) -> None:
    """``Depends(db.leased)`` waits in the same line: the endpoint of a gone client never runs."""
    async with one_connection_line(database_url) as (line, base_url, server):
        await hang_up_while_waiting(line, server, base_url, "/leased/1")
        assert await served_behind(line, base_url, "/leased/2") == 200
        assert line.leased == [2]
        assert line.db.stats().abandoned == 1


async def test_work_a_request_started_in_its_own_task_is_run_after_its_client_left(
    database_url: str, tables: Tables
) -> None:
    """Only the request's own unit is skipped: a task it started is served whatever happens."""
    await tables.create("ab_rows", "value INTEGER NOT NULL")
    async with one_connection_line(database_url) as (line, base_url, server):
        # The task the request started waits in line; the request itself waits on release.
        await hang_up_while_waiting(line, server, base_url, "/started/3")
        line.release.set()
        await asyncio.gather(*line.started)
        assert line.db.stats().abandoned == 0
    assert await count_rows(database_url, "ab_rows WHERE value = 3") == 1
