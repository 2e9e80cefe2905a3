"""HTTP middleware and the request's unit of work, as docs/fastapi.md describes them.

Middleware runs outside the request's unit of work: ``db.current_session()`` raises
NoSessionError there, before the call to the app and after it. Middleware that writes opens
a unit of its own (the documented audit middleware), committed on its own, after the response
has been sent; a write that must share the request's fate goes in a dependency (the
documented ``audited``). Every app is the page's own code, served by uvicorn over HTTP.

No ``from __future__ import annotations``: the endpoints use a ``Session`` alias built
inside a function.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, create_async_engine
from starlette.types import ASGIApp, Receive, Scope, Send

from dbscope import Database, NoSessionError
from tests.documented import block_containing, python_blocks, run_block, serving
from tests.helpers import admin

PAGE = "docs/fastapi.md"
AUDIT_ROWS = "SELECT method, path, status FROM audit_log ORDER BY path"
RESPONSE_TIMEOUT = 5.0
APPEAR_TIMEOUT = 5.0
AUDIT_TABLE = "CREATE TABLE audit_log (method VARCHAR(10), path VARCHAR(40), status INTEGER)"


def documented_page(database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The page's opening block: ``db`` (from DATABASE_URL), ``app`` and ``Session``."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    return run_block(python_blocks(PAGE)[0], database_url)


def add_note_endpoints(app: FastAPI | APIRouter, db: Database) -> None:
    """``POST /notes`` stores a note; ``POST /conflicts`` stores one, then raises 409;
    ``POST /errors`` stores one, then raises an unhandled error."""
    Session = Annotated[AsyncSession, Depends(db.session)]  # the page's Session

    @app.post("/notes")
    async def add_note(session: Session) -> dict[str, str]:
        await session.execute(text("INSERT INTO notes (text) VALUES ('kept')"))
        return {"status": "stored"}

    @app.post("/conflicts")
    async def conflict(session: Session) -> None:
        await session.execute(text("INSERT INTO notes (text) VALUES ('rolled back')"))
        raise HTTPException(409, "conflict")

    @app.post("/errors")
    async def error(session: Session) -> None:
        await session.execute(text("INSERT INTO notes (text) VALUES ('rolled back')"))
        raise RuntimeError("a bug")


def audited_app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The page's app with its audit middleware, and the note endpoints."""
    page = documented_page(database_url, monkeypatch)
    code = block_containing(PAGE, "class AuditMiddleware")
    page = run_block(code, database_url, namespace=page)
    add_note_endpoints(page["app"], page["db"])
    return page


@contextlib.asynccontextmanager
async def tables(database_url: str) -> AsyncIterator[AsyncConnection]:
    """Fresh ``notes`` and ``audit_log`` tables; yields an autocommit connection."""
    async with admin(database_url) as connection:
        for table in ("notes", "audit_log"):
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        await connection.execute(text("CREATE TABLE notes (text VARCHAR(40))"))
        await connection.execute(text(AUDIT_TABLE))
        yield connection
        for table in ("notes", "audit_log"):
            await connection.execute(text(f"DROP TABLE {table}"))


async def rows(connection: AsyncConnection, query: str) -> list[tuple[Any, ...]]:
    """Every row ``query`` returns, as tuples."""
    return [tuple(row) for row in (await connection.execute(text(query))).all()]


async def post_then_rows(
    database_url: str, app: FastAPI, path: str
) -> tuple[int, list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """POST ``path`` to ``app`` served by uvicorn, on fresh tables: the status, then the notes
    and the audit rows stored once the response has come."""
    async with tables(database_url) as connection:
        async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post(path)
        notes = await rows(connection, "SELECT text FROM notes")
        audit = await rows(connection, AUDIT_ROWS)
    return response.status_code, notes, audit


# -- no unit of work in middleware ------------------------------------------------------------


class UnitOfWorkProbe:
    """Pure ASGI middleware: asks for the unit of work before and after the call to the app,
    through ``db.current_session()``, ``db.on_commit()`` and ``db.use_schema()``."""

    def __init__(self, app: ASGIApp, db: Database, outcomes: dict[str, list[object]]) -> None:
        self.app = app
        self.db = db
        self.outcomes = outcomes

    async def probe(self) -> list[object]:
        """What each of the three calls gave: its result, or the NoSessionError it raised."""
        calls: list[Callable[[], Awaitable[object]]] = [
            self.current_session,
            self.on_commit,
            lambda: self.db.use_schema(None),
        ]
        outcomes: list[object] = []
        for call in calls:
            try:
                outcomes.append(await call())
            except NoSessionError as error:
                outcomes.append(error)
        return outcomes

    async def current_session(self) -> object:
        return self.db.current_session()

    async def on_commit(self) -> object:
        self.db.on_commit(lambda: None)
        return "registered"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.outcomes["before"] = await self.probe()
        await self.app(scope, receive, send)
        self.outcomes["after"] = await self.probe()


async def probe_a_request(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[httpx.Response, dict[str, list[object]]]:
    """POST /notes through the probe; the response, and what the probe got."""
    page = documented_page(database_url, monkeypatch)
    outcomes: dict[str, list[object]] = {}
    page["app"].add_middleware(UnitOfWorkProbe, db=page["db"], outcomes=outcomes)
    add_note_endpoints(page["app"], page["db"])
    async with (
        tables(database_url),
        serving(page["app"]) as base_url,
        httpx.AsyncClient(base_url=base_url) as client,
    ):
        response = await client.post("/notes")
    return response, outcomes


async def test_middleware_has_no_unit_of_work_before_the_app_runs(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the call to the app, current_session(), on_commit() and use_schema() raise
    NoSessionError: the request's unit of work does not exist yet."""
    response, outcomes = await probe_a_request(database_url, monkeypatch)
    assert response.status_code == 200
    assert [type(outcome) for outcome in outcomes["before"]] == [NoSessionError] * 3


async def test_middleware_has_no_unit_of_work_after_the_app_returns(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the call to the app, current_session(), on_commit() and use_schema() raise
    NoSessionError: the request's unit of work has ended."""
    response, outcomes = await probe_a_request(database_url, monkeypatch)
    assert response.status_code == 200
    assert [type(outcome) for outcome in outcomes["after"]] == [NoSessionError] * 3


# -- the documented audit middleware ----------------------------------------------------------


@pytest.mark.parametrize(("path", "status"), [("/conflicts", 409), ("/errors", 500)])
async def test_a_failed_request_is_audited_with_its_status_though_its_write_rolls_back(
    database_url: str, monkeypatch: pytest.MonkeyPatch, path: str, status: int
) -> None:
    """An endpoint that writes, then raises 409, or has a bug (500): its row is gone, the
    client gets the status, and the audit row stays, saying that status."""
    page = audited_app(database_url, monkeypatch)
    answered, notes, audit = await post_then_rows(database_url, page["app"], path)
    assert answered == status
    assert notes == []
    assert audit == [("POST", path, status)]


async def test_an_audit_write_that_fails_leaves_the_answer_as_it_was(
    database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With no audit_log table, the request still gets its 200 and its note is stored; the
    audit's error reaches the server's log."""
    caplog.set_level(logging.ERROR, logger="uvicorn.error")
    page = audited_app(database_url, monkeypatch)
    async with tables(database_url) as connection:
        await connection.execute(text("DROP TABLE audit_log"))
        async with serving(page["app"]) as base_url, httpx.AsyncClient(base_url=base_url) as client:
            response = await client.post("/notes")
        notes = await rows(connection, "SELECT text FROM notes")
        await connection.execute(text(AUDIT_TABLE))
    logged = [record for record in caplog.records if record.name == "uvicorn.error"]
    assert response.status_code == 200
    assert notes == [("kept",)]
    assert len(logged) == 1
    assert logged[0].exc_info is not None
    assert "audit_log" in str(logged[0].exc_info[1])


async def test_the_client_has_its_answer_before_the_audit_row_is_committed(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With audit_log locked against writes, the request still gets its 200; the audit row
    arrives once the lock is gone."""
    page = audited_app(postgres_url, monkeypatch)
    engine = create_async_engine(postgres_url)
    try:
        async with tables(postgres_url) as connection, serving(page["app"]) as base_url:
            async with engine.connect() as holder:
                await holder.execute(text("LOCK TABLE audit_log IN EXCLUSIVE MODE"))
                async with httpx.AsyncClient(base_url=base_url, timeout=RESPONSE_TIMEOUT) as client:
                    response = await client.post("/notes")
                notes_while_locked = await rows(connection, "SELECT text FROM notes")
                audit_while_locked = await rows(connection, AUDIT_ROWS)
                await holder.commit()
            audit = await eventually(connection, AUDIT_ROWS)
    finally:
        await engine.dispose()
    assert response.status_code == 200
    assert notes_while_locked == [("kept",)]
    assert audit_while_locked == []
    assert audit == [("POST", "/notes", 200)]


async def eventually(connection: AsyncConnection, query: str) -> list[tuple[Any, ...]]:
    """The rows of ``query`` once there are some, polled for a few seconds."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(APPEAR_TIMEOUT):
            # Another connection's commit is the only signal: nothing to wait on but a poll.
            while not await rows(connection, query):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    return await rows(connection, query)


# -- never around the call --------------------------------------------------------------------


class AroundTheCall:
    """Pure ASGI middleware that keeps a transaction open across the call to the app."""

    def __init__(self, app: ASGIApp, db: Database, seen: dict[str, object]) -> None:
        self.app = app
        self.db = db
        self.seen = seen

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # On SQLite read-only: one that may write, begun around the endpoint's, is refused
        # (the endpoint's would wait for its write lock; test_sqlite_writers.py).
        read_only = self.db.url.get_backend_name() == "sqlite"
        async with self.db.transaction(read_only=read_only) as session:
            await session.execute(text("SELECT 1"))
            self.seen["middleware"] = session
            await self.app(scope, receive, send)


def around_app(
    database_url: str, monkeypatch: pytest.MonkeyPatch, seen: dict[str, object]
) -> FastAPI:
    """The page's app behind AroundTheCall: ``/with-session`` takes Session, ``/service``
    calls ``db.current_session()`` only; each notes what it saw."""
    page = documented_page(database_url, monkeypatch)
    app: FastAPI = page["app"]
    db: Database = page["db"]
    Session = Annotated[AsyncSession, Depends(db.session)]  # the page's Session
    app.add_middleware(AroundTheCall, db=db, seen=seen)

    @app.get("/with-session")
    async def with_session(session: Session) -> None:
        await session.execute(text("SELECT 1"))
        seen["endpoint"] = session
        seen["current"] = db.current_session()
        seen["checked_out"] = db.stats().checked_out

    @app.get("/service")
    async def service() -> None:
        seen["service"] = db.current_session()

    return app


async def test_a_transaction_around_the_call_to_the_app_holds_a_second_connection(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint's unit of work runs while the middleware's holds its own connection."""
    seen: dict[str, object] = {}
    app = around_app(database_url, monkeypatch, seen)
    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        response = await client.get("/with-session")
    assert response.status_code == 200
    assert seen["checked_out"] == 2
    assert seen["endpoint"] is not seen["middleware"]


async def test_current_session_inside_a_middleware_transaction_is_the_innermost_unit(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Around the call, current_session() is the endpoint's session where the endpoint
    takes Session, and the middleware's where it does not."""
    seen: dict[str, object] = {}
    app = around_app(database_url, monkeypatch, seen)
    async with serving(app) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        responses = [await client.get("/with-session"), await client.get("/service")]
    assert [response.status_code for response in responses] == [200, 200]
    assert seen["current"] is seen["endpoint"]
    assert seen["service"] is seen["middleware"]


# -- a write that shares the request's fate: the documented dependency ------------------------


def app_with_audit_dependency(database_url: str, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    """The page's app with the note endpoints on a router behind ``audited``."""
    page = documented_page(database_url, monkeypatch)
    code = block_containing(PAGE, "async def audited")
    page = run_block(code, database_url, namespace=page)
    add_note_endpoints(page["router"], page["db"])
    app: FastAPI = page["app"]
    app.include_router(page["router"])
    return app


FATES = {
    "/notes": (200, [("kept",)], [("POST", "/notes", None)]),
    "/conflicts": (409, [], []),
}


@pytest.mark.parametrize("path", list(FATES))
async def test_the_audit_dependency_shares_the_fate_of_the_request(
    database_url: str, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A request that succeeds stores its note and its audit row together; a request that
    raises 409 keeps neither its note nor its audit row."""
    app = app_with_audit_dependency(database_url, monkeypatch)
    status, notes, audit = await post_then_rows(database_url, app, path)
    expected_status, expected_notes, expected_audit = FATES[path]
    assert status == expected_status
    assert notes == expected_notes
    assert audit == expected_audit
