"""Every way a request can fail rolls back its writes, and keeps the app's own status code.

The same app is built twice: once on dbscope's ``Session``, once on a plain dependency that
yields an AsyncSession and never commits. The plain app tells what status FastAPI gives on its
own; the dbscope app must give the same and store nothing. Rows are read afterwards in a
transaction of their own, after the request's has ended.

No ``from __future__ import annotations``: the endpoints below use a ``Session`` alias built
inside a function, which FastAPI must be able to resolve at runtime.
"""

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from dbscope import Database
from tests.helpers import Tables, client_for, stored

APPLICATION_NAME = f"dbscope-test-rollback-{os.getpid()}"


class Conflict(Exception):
    """An application error that has its own exception handler (409)."""


class Item(BaseModel):
    """The response model that the /bad-response endpoint fails to match."""

    name: str


def build_app(session_dependency: Callable[..., Any]) -> FastAPI:
    """One endpoint per way of failing; each writes a row labelled with its own path first.

    ``app.state.written`` lists the labels whose INSERT ran, so a test can tell a rolled-back
    write from one that was never made.
    """
    app = FastAPI()
    app.state.written = []
    app.state.started = asyncio.Event()
    add_raising_routes(app, session_dependency)
    add_answering_routes(app, session_dependency)
    add_cancelled_routes(app, session_dependency)
    return app


async def write(app: FastAPI, session: AsyncSession, label: str) -> None:
    """Insert the row ``label``, and note it in ``app.state.written``."""
    await session.execute(text("INSERT INTO rb_rows (label) VALUES (:label)"), {"label": label})
    app.state.written.append(label)


def add_raising_routes(app: FastAPI, session_dependency: Callable[..., Any]) -> None:
    """Endpoints that write, then raise or fail their response model."""
    Session = Annotated[AsyncSession, Depends(session_dependency)]

    async def write_first(session: Session) -> None:
        await write(app, session, "validation")

    @app.exception_handler(Conflict)
    async def conflict(request: Request, error: Conflict) -> JSONResponse:
        return JSONResponse({"detail": "conflict"}, status_code=409)

    @app.post("/http-exception")
    async def http_exception(session: Session) -> None:
        await write(app, session, "http-exception")
        raise HTTPException(status_code=404, detail="no such thing")

    @app.post("/validation")
    async def validation(_: Annotated[None, Depends(write_first)], n: int) -> dict[str, int]:
        return {"n": n}

    @app.post("/conflict")
    async def handled(session: Session) -> None:
        await write(app, session, "conflict")
        raise Conflict

    @app.post("/value-error")
    async def value_error(session: Session) -> None:
        await write(app, session, "value-error")
        raise ValueError("a bug in the endpoint")

    @app.post("/bad-response", response_model=Item)
    async def bad_response(session: Session) -> Any:
        await write(app, session, "bad-response")
        return {"title": "not an Item"}


def add_answering_routes(app: FastAPI, session_dependency: Callable[..., Any]) -> None:
    """Endpoints that write, then return: a success, or an error status of their own."""
    Session = Annotated[AsyncSession, Depends(session_dependency)]

    @app.post("/ok")
    async def ok(session: Session) -> dict[str, str]:
        await write(app, session, "ok")
        return {"status": "ok"}

    @app.post("/returned-400")
    async def returned_400(session: Session) -> JSONResponse:
        await write(app, session, "returned-400")
        return JSONResponse({"detail": "refused"}, status_code=400)

    @app.post("/rollback-then-400")
    async def rollback_then_400(session: Session) -> JSONResponse:
        await write(app, session, "rollback-then-400")
        await session.rollback()
        return JSONResponse({"detail": "refused"}, status_code=400)

    @app.post("/status-400")
    async def status_400(session: Session, response: Response) -> dict[str, str]:
        await write(app, session, "status-400")
        response.status_code = 400
        return {"detail": "refused"}


def add_cancelled_routes(app: FastAPI, session_dependency: Callable[..., Any]) -> None:
    """Endpoints that write, set ``app.state.started``, then wait to be cancelled."""
    Session = Annotated[AsyncSession, Depends(session_dependency)]

    @app.post("/cancel")
    async def cancel(session: Session) -> None:
        await write(app, session, "cancel")
        app.state.started.set()
        await asyncio.sleep(60)

    @app.post("/cancel-mid-query")
    async def cancel_mid_query(session: Session) -> None:
        await write(app, session, "cancel-mid-query")
        app.state.started.set()
        await session.execute(text("SELECT pg_sleep(60)"))


async def stored_labels(db: Database) -> list[str]:
    """The labels committed so far, read in a unit of work of their own."""
    return await stored(db, "SELECT label FROM rb_rows ORDER BY label")


@pytest.fixture
async def db(database_url: str, tables: Tables) -> AsyncIterator[Database]:
    """A connected Database over an empty ``rb_rows`` table, named in pg_stat_activity."""
    await tables.create("rb_rows", "label VARCHAR(40) NOT NULL")
    async with Database(database_url, application_name=APPLICATION_NAME) as database:
        yield database


async def post(db: Database, path: str) -> tuple[int, list[str], list[str]]:
    """POST ``path`` to the dbscope app: the status, the labels written, the labels stored."""
    app = build_app(db.session)
    async with client_for(app) as client:
        response = await client.post(path)
    return response.status_code, app.state.written, await stored_labels(db)


async def test_an_http_exception_rolls_back_and_answers_its_404(db: Database) -> None:
    """A write followed by HTTPException(404) is not stored; the client gets the 404."""
    assert await post(db, "/http-exception") == (404, ["http-exception"], [])


async def test_a_request_validation_error_rolls_back_and_answers_422(db: Database) -> None:
    """A dependency's write is not stored when a query parameter then fails validation."""
    assert await post(db, "/validation?n=not-a-number") == (422, ["validation"], [])


async def test_a_handled_custom_exception_rolls_back_and_answers_its_409(db: Database) -> None:
    """An exception turned into 409 by the app's own handler still rolls the write back."""
    assert await post(db, "/conflict") == (409, ["conflict"], [])


async def test_an_unexpected_error_rolls_back_and_answers_500(db: Database) -> None:
    """A ValueError raised after a write gives 500 and stores nothing."""
    assert await post(db, "/value-error") == (500, ["value-error"], [])


async def test_a_response_model_error_rolls_back_and_answers_500(db: Database) -> None:
    """A return value that fails the response model gives 500 and stores nothing."""
    assert await post(db, "/bad-response") == (500, ["bad-response"], [])


async def test_a_returned_error_response_commits(db: Database) -> None:
    """A JSONResponse(status_code=400) that is returned, not raised, commits (documented)."""
    assert await post(db, "/returned-400") == (400, ["returned-400"], ["returned-400"])


async def test_a_rollback_before_returning_an_error_response_stores_nothing(
    db: Database,
) -> None:
    """An endpoint that rolls back, then returns its 400, leaves nothing behind."""
    assert await post(db, "/rollback-then-400") == (400, ["rollback-then-400"], [])


async def test_an_error_status_set_on_the_injected_response_rolls_back(db: Database) -> None:
    """``response.status_code = 400`` on the injected Response rolls the write back."""
    assert await post(db, "/status-400") == (400, ["status-400"], [])


async def test_a_successful_request_stores_its_write(db: Database) -> None:
    """The control: the same write in an endpoint that succeeds is stored."""
    assert await post(db, "/ok") == (200, ["ok"], ["ok"])


@pytest.mark.parametrize(
    "path",
    [
        "/ok",
        "/http-exception",
        "/validation?n=not-a-number",
        "/conflict",
        "/value-error",
        "/bad-response",
        "/returned-400",
        "/rollback-then-400",
        "/status-400",
    ],
)
async def test_the_status_code_is_the_one_the_app_gives_without_dbscope(
    db: Database, database_url: str, path: str
) -> None:
    """dbscope's Session and a plain session dependency give the same status code."""
    engine = create_async_engine(database_url)
    sessions = async_sessionmaker(engine)

    async def plain_session() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    try:
        async with client_for(build_app(plain_session)) as client:
            plain = await client.post(path)
    finally:
        await engine.dispose()
    status, _, _ = await post(db, path)
    assert status == plain.status_code


async def cancel_in_flight(
    db: Database, path: str, ready: Callable[[], Awaitable[bool]]
) -> list[str]:
    """POST ``path``; once its endpoint has written and ``ready()`` holds, cancel the request.

    Returns the labels the endpoint wrote.
    """
    app = build_app(db.session)
    async with client_for(app) as client:
        request = asyncio.create_task(client.post(path))
        await asyncio.wait_for(app.state.started.wait(), timeout=10)
        with anyio.fail_after(10):
            while True:
                if await ready():
                    break
                await asyncio.sleep(0.02)
        request.cancel()
        with pytest.raises(asyncio.CancelledError):
            await request
    return list(app.state.written)


async def test_a_request_cancelled_while_the_endpoint_awaits_rolls_back(db: Database) -> None:
    """A request cancelled after its write stores nothing and gives its connection back."""
    checked_out: list[int] = []

    async def holding_its_connection() -> bool:
        checked_out.append(db.stats().checked_out)
        return True

    written = await cancel_in_flight(db, "/cancel", holding_its_connection)
    assert checked_out == [1]
    assert db.stats().checked_out == 0
    assert written == ["cancel"]
    assert await stored_labels(db) == []


async def sleeping_in_postgres(db: Database) -> bool:
    """Whether a connection of this test runs the endpoint's ``pg_sleep`` right now."""
    watch = text(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
        "AND state = 'active' AND query = 'SELECT pg_sleep(60)'"
    )
    # A transaction of its own each time: PostgreSQL freezes pg_stat_activity per transaction.
    async with db.transaction() as session:
        return bool((await session.execute(watch, {"name": APPLICATION_NAME})).scalar_one())


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_request_cancelled_in_the_middle_of_a_query_rolls_back(db: Database) -> None:
    """A request cancelled while PostgreSQL runs its query stores nothing, leaks nothing."""
    written = await cancel_in_flight(db, "/cancel-mid-query", lambda: sleeping_in_postgres(db))
    assert db.stats().checked_out == 0
    assert written == ["cancel-mid-query"]
    assert await stored_labels(db) == []
