"""Connections are checked out only for SQL, and are back in the pool before the response.

Checkouts are counted with the pool's own ``checkout`` event and ``db.stats()``: counts, not
timings. No ``from __future__ import annotations``: the endpoints use a ``Session`` alias
built inside a function.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Response
from fastapi.responses import StreamingResponse
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from tests.helpers import ResponseStart, client_for, send


def build_app(db: Database) -> FastAPI:
    """The endpoints under test; ``app.state.at_start`` gets the middleware's counts."""
    app = FastAPI()
    app.state.at_start = []
    app.add_middleware(
        ResponseStart, on_start=lambda: app.state.at_start.append(db.stats().checked_out)
    )
    Session = Annotated[AsyncSession, Depends(db.session)]

    async def first(session: Session) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    async def second(session: Session, one: Annotated[int, Depends(first)]) -> int:
        return one + int((await session.execute(text("SELECT 1"))).scalar_one())

    @app.get("/no-sql")
    async def no_sql(session: Session) -> dict[str, bool]:
        return {"has_session": isinstance(session, AsyncSession)}

    @app.get("/needs-int")
    async def needs_int(session: Session, n: int) -> dict[str, int]:
        return {"n": n * int((await session.execute(text("SELECT 1"))).scalar_one())}

    @app.get("/query")
    async def query(session: Session, response: Response) -> dict[str, int]:
        response.headers["x-checked-out"] = str(db.stats().checked_out)
        return {"one": int((await session.execute(text("SELECT 1"))).scalar_one())}

    @app.get("/stream")
    async def stream(session: Session) -> StreamingResponse:
        await session.execute(text("SELECT 1"))
        in_endpoint = db.stats().checked_out

        async def body() -> AsyncIterator[str]:
            yield f"{in_endpoint},"
            yield str(db.stats().checked_out)

        return StreamingResponse(body(), media_type="text/plain")

    @app.get("/many-dependencies")
    async def many_dependencies(
        session: Session,
        one: Annotated[int, Depends(first)],
        two: Annotated[int, Depends(second)],
    ) -> dict[str, int]:
        await asyncio.sleep(0.2)  # hold the connection so that the four requests overlap
        three = int((await session.execute(text("SELECT 1"))).scalar_one())
        return {"sum": one + two + three}

    return app


def count_checkouts(db: Database) -> list[object]:
    """A list that grows by one at every checkout from ``db``'s pool from now on."""
    checkouts: list[object] = []

    def on_checkout(*args: Any) -> None:
        checkouts.append(args[0])

    event.listen(db.engine.sync_engine.pool, "checkout", on_checkout)
    return checkouts


async def checkouts_for(
    database_url: str, path: str, control: str
) -> tuple[httpx.Response, httpx.Response, int]:
    """GET ``path``, then ``control`` (which runs SQL): both responses, and how many
    connections were checked out meanwhile."""
    async with Database(database_url) as db:
        checkouts = count_checkouts(db)
        async with client_for(build_app(db)) as client:
            response = await client.get(path)
            control_response = await client.get(control)
    return response, control_response, len(checkouts)


async def test_a_request_that_runs_no_sql_checks_out_no_connection(database_url: str) -> None:
    """An endpoint that takes the Session but never queries costs no checkout."""
    response, control, checkouts = await checkouts_for(database_url, "/no-sql", "/query")
    assert response.status_code == 200
    assert response.json() == {"has_session": True}
    assert control.status_code == 200
    assert checkouts == 1  # the control's, and only it


async def test_a_request_failing_validation_checks_out_no_connection(database_url: str) -> None:
    """A 422 before the endpoint runs costs no checkout."""
    response, control, checkouts = await checkouts_for(
        database_url, "/needs-int?n=not-a-number", "/needs-int?n=3"
    )
    assert response.status_code == 422
    assert control.json() == {"n": 3}
    assert checkouts == 1  # the control's, and only it


async def test_the_connection_is_back_before_the_response_starts(db: Database) -> None:
    """At ``http.response.start`` no connection is checked out any more."""
    app = build_app(db)
    response = await send(app, "GET /query")
    assert response.status_code == 200
    assert response.headers["x-checked-out"] == "0"  # before the endpoint's first query
    assert app.state.at_start == [0]


async def test_the_connection_is_back_before_a_streamed_body_is_produced(db: Database) -> None:
    """A StreamingResponse body sees no connection checked out; the endpoint saw one."""
    response = await send(build_app(db), "GET /stream")
    assert db.stats().checked_out == 0
    assert response.status_code == 200
    assert response.text == "1,0"


async def test_concurrent_requests_with_many_session_dependencies_fit_a_small_pool(
    database_url: str,
) -> None:
    """With 2 connections, 4 overlapping requests that ask for Session 3 times each succeed."""
    options: dict[str, Any] = {"pool_size": 2, "max_overflow": 0, "pool_timeout": 3}
    async with Database(database_url, **options) as db:
        checkouts = count_checkouts(db)
        async with client_for(build_app(db)) as client:
            responses = await asyncio.gather(*(client.get("/many-dependencies") for _ in range(4)))
        assert db.stats().checked_out == 0
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert [r.json() for r in responses] == [{"sum": 4}] * 4
    assert len(checkouts) == 4  # one connection per request, however many dependencies
