"""A streamed response is a unit of work of its own: committed only if the stream completes.

The stream tests talk HTTP to uvicorn in a subprocess (tests/apps/stream_app.py): only a real
server sees a client go away. ``/rows/{tag}`` inserts one row per chunk, five chunks 0.2 s
apart; clients that read two chunks and hang up must leave no row behind, and no connection
checked out. Rows are counted on a connection of the test's own.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import anyio
import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.responses import StreamingResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, UnitOfWorkEndedError
from tests.helpers import Tables, app_with, client_for, count_rows, send
from tests.server import running_server

APP = "stream_app:app"
SERVER_BACKENDS = ["asyncpg", "psycopg", "asyncmy"]
CLIENTS = 20
RecordProperty = Callable[[str, object], None]


@pytest.fixture
async def st_rows(tables: Tables) -> None:
    """An empty ``st_rows`` table for the test."""
    await tables.create("st_rows", "tag VARCHAR(40) NOT NULL, number INTEGER NOT NULL")


async def read_lines(client: httpx.AsyncClient, path: str, lines: int | None) -> list[str]:
    """Stream ``path``; read ``lines`` lines (all if None), then hang up."""
    received: list[str] = []
    async with client.stream("GET", path) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            received.append(line)
            if len(received) == lines:
                break
    return received


async def quiet_stats(client: httpx.AsyncClient, within: float = 5.0) -> dict[str, Any]:
    """The server's ``/stats`` once no connection is checked out (or after ``within`` s)."""
    deadline = time.monotonic() + within
    while True:
        stats: dict[str, Any] = (await client.get("/stats")).json()
        if stats["pool"]["checked_out"] == 0 or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


@pytest.mark.server
@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("st_rows")
async def test_clients_that_leave_a_stream_halfway_leave_no_rows_committed(
    database_url: str, db_backend: str, record_property: RecordProperty
) -> None:
    """20 clients read 2 of 5 row-per-chunk chunks and hang up: 0 rows, 0 checked out."""
    env = {"DATABASE_URL": database_url, "POOL_SIZE": str(CLIENTS), "MAX_OVERFLOW": "0"}
    with running_server(APP, env) as base_url:
        limits = httpx.Limits(max_connections=CLIENTS + 1)
        async with httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client:
            with anyio.fail_after(20):
                received = await asyncio.gather(
                    *(read_lines(client, f"/rows/c{n}", 2) for n in range(CLIENTS))
                )
                stats = await quiet_stats(client)
        rows = await count_rows(database_url, "st_rows")
    pool = stats["pool"]
    print(f"\n[{db_backend}] {CLIENTS} streams left after 2 of 5 chunks: rows={rows} pool={pool}")
    record_property("rows", rows)
    record_property("checked_out", pool["checked_out"])
    assert received == [[f"c{n} 0", f"c{n} 1"] for n in range(CLIENTS)]
    assert rows == 0
    assert pool["checked_out"] == 0
    assert stats["warnings"] == []
    assert stats["errors"] == []
    assert [line for line in stats["log"] if line.startswith("sqlalchemy")] == []


@pytest.mark.server
@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("st_rows")
async def test_a_client_gone_from_a_stream_whose_chunks_never_wait_keeps_nothing(
    database_url: str,
) -> None:
    """/buffered writes a row, then makes 2,000 chunks without waiting for anything (rows
    already fetched: an ORM result read whole, asyncmy's backlog); a client that reads two
    and hangs up leaves no row, and the body stops short (before: it ran to its end,
    uvicorn's writes to the gone client dropped, and committed)."""
    env = {"DATABASE_URL": database_url}
    with running_server(APP, env) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            with anyio.fail_after(20):
                received = await read_lines(client, "/buffered/gone", 2)
                stats = await quiet_stats(client)
        rows = await count_rows(database_url, "st_rows")
    assert [line.split(" ")[:2] for line in received] == [["gone", "0"], ["gone", "1"]]
    assert rows == 0
    assert stats["counters"]["buffered_chunks"] < 2000
    assert stats["pool"]["checked_out"] == 0


@pytest.mark.server
@pytest.mark.parametrize("db_backend", SERVER_BACKENDS)
@pytest.mark.usefixtures("st_rows")
async def test_a_client_gone_while_the_first_chunk_is_made_keeps_nothing(
    database_url: str,
) -> None:
    """/one writes, then makes its only chunk 0.5 s later; a client that gives up after 0.1 s
    leaves no row and runs no background task, though the body would end without another
    statement (before: committed, and the background run); one that waits gets both."""
    env = {"DATABASE_URL": database_url, "STREAM_CHUNK_PAUSE": "0.5"}
    with running_server(APP, env) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=0.1) as impatient:
            with pytest.raises(httpx.TimeoutException):
                await impatient.get("/one/gone")
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            await asyncio.sleep(1.0)  # past the pause: the gone client's unit has ended
            kept = await client.get("/one/kept")
            # The background task runs once the response is sent: asked until it has run.
            for _ in range(250):
                stats = await quiet_stats(client)
                if stats["counters"]["background"]:
                    break
                await asyncio.sleep(0.02)
        rows = {
            tag: await count_rows(database_url, f"st_rows WHERE tag = '{tag}'")
            for tag in ("gone", "kept")
        }
    assert (kept.status_code, kept.text) == (200, "kept\n")
    assert rows == {"gone": 0, "kept": 1}
    assert stats["counters"]["background"] == 1
    assert stats["pool"]["checked_out"] == 0


@pytest.mark.server
@pytest.mark.usefixtures("st_rows")
async def test_a_stream_read_to_the_end_commits_its_rows(database_url: str) -> None:
    """A client that reads all five chunks finds the five rows stored; nothing checked out."""
    env = {"DATABASE_URL": database_url, "STREAM_CHUNK_PAUSE": "0.01"}
    with running_server(APP, env) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            received = await read_lines(client, "/rows/whole", None)
            stats = await quiet_stats(client)
        rows = await count_rows(database_url, "st_rows")
    assert received == [f"whole {n}" for n in range(5)]
    assert rows == 5
    assert stats["pool"]["checked_out"] == 0


def build_app(db: Database) -> FastAPI:
    """In-process endpoints: a body that fails halfway, and one using the request's session.

    ``app.state.refused`` collects the errors the request's session gave the stream's body.
    """
    refused: list[Exception] = []
    insert = text("INSERT INTO st_rows (tag, number) VALUES (:tag, :number)")

    async def fails_halfway() -> StreamingResponse:
        async def rows(session: AsyncSession) -> AsyncIterator[str]:
            for number in range(5):
                if number == 3:
                    raise RuntimeError("the stream's body failed after three rows")
                await session.execute(insert, {"tag": "failing", "number": number})
                yield f"{number}\n"

        return StreamingResponse(db.stream(rows), media_type="text/plain")

    async def request_session(session: AsyncSession) -> StreamingResponse:
        await session.execute(insert, {"tag": "request", "number": 0})

        async def rows() -> AsyncIterator[str]:
            try:
                await session.execute(insert, {"tag": "body", "number": 1})
            except UnitOfWorkEndedError as error:
                refused.append(error)
            yield "done\n"

        return StreamingResponse(rows(), media_type="text/plain")

    app = app_with(
        db.session, {"GET /fails-halfway": fails_halfway, "GET /request-session": request_session}
    )
    app.state.refused = refused
    return app


@pytest.mark.usefixtures("st_rows")
async def test_a_stream_whose_body_fails_halfway_commits_nothing(
    database_url: str, db: Database
) -> None:
    """A body that raises after three rows rolls them back and returns its connection."""
    response = await send(build_app(db), "GET /fails-halfway")
    checked_out = db.stats().checked_out
    rows = await count_rows(database_url, "st_rows")
    assert response.text == "0\n1\n2\n"
    assert rows == 0
    assert checked_out == 0


@pytest.mark.usefixtures("st_rows")
async def test_a_streaming_body_using_the_requests_session_gets_unit_of_work_ended(
    database_url: str, db: Database
) -> None:
    """The request's session refuses the body of its StreamingResponse; its row is kept."""
    app = build_app(db)
    response = await send(app, "GET /request-session")
    checked_out = db.stats().checked_out
    rows = await count_rows(database_url, "st_rows")
    assert response.text == "done\n"
    assert [type(error) for error in app.state.refused] == [UnitOfWorkEndedError]
    assert rows == 1
    assert checked_out == 0


def export_app(db: Database) -> FastAPI:
    """``/response`` returns ``db.stream_response(rows)``, ``/as-is``
    ``StreamingResponse(db.stream(rows))``: each stores three rows, one per chunk.
    ``/with-request-unit`` writes a row and registers a callback in the request's unit, then
    returns a stream_response; ``/raises`` makes one, then fails. No exception handlers."""
    insert = text("INSERT INTO st_rows (tag, number) VALUES (:tag, :number)")
    app = FastAPI()
    app.state.called = []

    def rows(tag: str) -> Callable[[AsyncSession], AsyncIterator[str]]:
        async def body(session: AsyncSession) -> AsyncIterator[str]:
            for number in range(3):
                await session.execute(insert, {"tag": tag, "number": number})
                yield f"{number}\n"

        return body

    @app.get("/response")
    async def response() -> StreamingResponse:
        return db.stream_response(rows("response"), media_type="text/plain")

    @app.get("/as-is")
    async def as_is() -> StreamingResponse:
        return StreamingResponse(db.stream(rows("as-is")), media_type="text/plain")

    @app.get("/with-request-unit")
    async def with_request_unit(
        session: Annotated[AsyncSession, Depends(db.session)],
    ) -> StreamingResponse:
        await session.execute(insert, {"tag": "request", "number": 0})
        db.on_commit(lambda: app.state.called.append("request committed"))
        return db.stream_response(rows("stream"), media_type="text/plain")

    @app.get("/raises")
    async def raises() -> StreamingResponse:
        db.stream_response(rows("never"))
        raise RuntimeError("the endpoint failed after making its stream_response")

    return app


@pytest.mark.usefixtures("st_rows")
async def test_a_stream_response_answers_503_when_the_pool_is_exhausted(database_url: str) -> None:
    """The pool's one connection held: stream_response waits pool_timeout before the response
    starts and answers 503 with Retry-After, as db.session does, with no exception handler;
    StreamingResponse(db.stream(rows)) can only cut its 200 short. Once the connection is
    back, stream_response sends and stores every chunk."""
    db = Database(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    async with db, client_for(export_app(db)) as client:
        async with db.transaction() as held:
            await held.execute(text("SELECT 1"))
            refused = await client.get("/response")
            cut = await client.get("/as-is")
        served = await client.get("/response")
        stats = db.stats()
    rows = await count_rows(database_url, "st_rows WHERE tag = 'response'")
    assert (refused.status_code, refused.headers.get("retry-after")) == (503, "1")
    assert refused.json()["detail"]["cause"] == "pool_timeout"
    assert (cut.status_code, cut.text) == (200, "")  # the response had started
    assert (served.status_code, served.text) == (200, "0\n1\n2\n")
    assert rows == 3
    assert (stats.checked_out, stats.timeouts) == (0, 2)


async def test_a_stream_whose_first_chunk_runs_no_query_answers_503_too(
    database_url: str,
) -> None:
    """A CSV header yielded before the first query: the response started (200) on that chunk,
    and the body stopped after it when the pool had no connection. The unit now takes its
    connection before the body runs."""
    db = Database(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)

    async def csv(session: AsyncSession) -> AsyncIterator[str]:
        yield "n\n"
        yield f"{(await session.execute(text('SELECT 1'))).scalar_one()}\n"

    app = FastAPI()

    @app.get("/export.csv")
    async def export() -> StreamingResponse:
        return db.stream_response(csv, media_type="text/csv")

    async with db, client_for(app) as client:
        async with db.transaction() as held:
            await held.execute(text("SELECT 1"))
            refused = await client.get("/export.csv")
        served = await client.get("/export.csv")
    assert refused.status_code == 503
    assert refused.json()["detail"]["cause"] == "pool_timeout"
    assert (served.status_code, served.text) == (200, "n\n1\n")


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_stream_responses_statements_carry_the_requests_tags_and_id(
    database_url: str,
) -> None:
    """sql_comments on: the stream's statements name the route, as the request's own unit's
    do, and the connection is named after the request's X-Request-ID (before: only the
    Database's own tags, and its application name)."""
    db = Database(database_url, sql_comments="append")
    seen: list[tuple[str, str]] = []

    async def body(session: AsyncSession) -> AsyncIterator[str]:
        own = "SELECT query, current_setting('application_name') FROM pg_stat_activity"
        row = (await session.execute(text(f"{own} WHERE pid = pg_backend_pid()"))).one()
        seen.append((row[0], row[1]))
        yield "seen\n"

    app = FastAPI()

    @app.get("/reports/{name}")
    async def report(name: str) -> StreamingResponse:
        return db.stream_response(body, media_type="text/plain")

    async with db, client_for(app) as client:
        response = await client.get("/reports/daily", headers={"X-Request-ID": "req-77"})
    assert response.text == "seen\n"
    [(query, name)] = seen
    assert "route='%2Freports%2F%7Bname%7D'" in query
    assert "controller='report'" in query
    assert name == "req-77"


@pytest.mark.usefixtures("st_rows")
async def test_a_stream_response_leaves_the_requests_unit_its_own(
    database_url: str, db: Database
) -> None:
    """The request's unit writes and registers a callback, then returns a stream_response:
    the request's row is committed and its callback run before the stream's unit opens; the
    stream's rows are stored too, and no connection stays checked out."""
    app = export_app(db)
    response = await send(app, "GET /with-request-unit")
    request_rows = await count_rows(database_url, "st_rows WHERE tag = 'request'")
    stream_rows = await count_rows(database_url, "st_rows WHERE tag = 'stream'")
    assert (response.status_code, response.text) == (200, "0\n1\n2\n")
    assert (request_rows, stream_rows) == (1, 3)
    assert app.state.called == ["request committed"]
    assert db.stats().checked_out == 0


@pytest.mark.usefixtures("st_rows")
async def test_a_stream_response_never_sent_holds_no_connection(
    database_url: str, db: Database
) -> None:
    """An endpoint that makes a stream_response and then raises: 500, and its unit was never
    opened, so nothing waits for the garbage collector to give a connection back."""
    response = await send(export_app(db), "GET /raises")
    assert response.status_code == 500
    assert db.stats().checked_out == 0
    assert await count_rows(database_url, "st_rows") == 0


@pytest.mark.usefixtures("st_rows")
async def test_a_stream_response_with_no_chunk_commits_and_sends_nothing(
    database_url: str, db: Database
) -> None:
    """A body that writes and yields nothing: the unit ends before the response starts,
    committed; the response is empty."""

    async def writes_only(session: AsyncSession) -> AsyncIterator[str]:
        await session.execute(text("INSERT INTO st_rows (tag, number) VALUES ('empty', 0)"))
        return
        yield ""

    async def empty() -> StreamingResponse:
        return db.stream_response(writes_only, media_type="text/plain")

    response = await send(app_with(db.session, {"GET /empty": empty}), "GET /empty")
    rows = await count_rows(database_url, "st_rows WHERE tag = 'empty'")
    assert (response.status_code, response.text, rows) == (200, "", 1)
    assert db.stats().checked_out == 0
