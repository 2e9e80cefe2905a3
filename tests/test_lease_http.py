"""Depends(db.leased) and leases inside endpoints: the driver connection in a request.

The connection goes back to the pool before the response starts; the faults are real, as in
test_lease.py, and an outage inside an endpoint's own code is answered by the exception
handlers. The bodies speak each driver's own API (tests/driver_connections.py).

No ``from __future__ import annotations``: the endpoints use aliases built inside a function.
"""

import asyncio
from typing import Annotated, Any

import anyio
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import event, text

from dbscope import Database
from dbscope.fastapi import add_exception_handlers
from tests import helpers
from tests.documented import python_blocks, run_block
from tests.driver_connections import SMALL_POOL, backend_id_query, execute, fetch_value

TIMEOUT = 0.2
# SMALL_POOL whose requests give up sooner: each test of an exhausted pool waits it out twice.
SHORT_WAIT = {**SMALL_POOL, "pool_timeout": 0.1}


# -- the app ----------------------------------------------------------------------------------


def build_app(db: Database) -> FastAPI:
    """Endpoints on leased connections; ``app.state.events`` records each connection's
    return to the pool ("checkin") and each response's start ("response-start")."""
    app = FastAPI()
    app.state.events = []
    app.state.started = asyncio.Event()
    app.state.release = asyncio.Event()
    app.state.backend_id = None
    add_leased_routes(app, db)
    add_inline_routes(app, db)
    app.add_middleware(
        helpers.ResponseStart, on_start=lambda: app.state.events.append("response-start")
    )
    event.listen(db.engine.sync_engine, "checkin", lambda *_: app.state.events.append("checkin"))
    return app


def add_leased_routes(app: FastAPI, db: Database) -> None:
    """Endpoints taking ``Depends(db.leased)``; ``/hold`` waits for ``app.state.release``."""
    Leased = Annotated[Any, Depends(db.leased)]
    LeasedForTheFunction = Annotated[Any, Depends(db.leased, scope="function")]

    @app.get("/one")
    async def one(connection: Leased) -> dict[str, int]:
        return {"one": int(await fetch_value(connection, "SELECT 1"))}

    @app.get("/one-function-scope")
    async def one_function_scope(connection: LeasedForTheFunction) -> dict[str, int]:
        return {"one": int(await fetch_value(connection, "SELECT 1"))}

    @app.get("/twice")
    async def twice(first: Leased, second: Leased) -> dict[str, bool]:
        return {"same": first is second}

    @app.get("/syntax-error")
    async def syntax_error(connection: Leased) -> dict[str, int]:
        await execute(connection, "SELEC 1")
        return {}

    @app.get("/hold")
    async def hold(connection: Leased) -> dict[str, int]:
        app.state.backend_id = await fetch_value(connection, backend_id_query(connection))
        app.state.started.set()
        await app.state.release.wait()
        return {"one": int(await fetch_value(connection, "SELECT 1"))}


def add_inline_routes(app: FastAPI, db: Database) -> None:
    """Endpoints whose own code leases (``/inline``) or opens a transaction."""

    @app.get("/inline")
    async def inline() -> dict[str, int]:
        async with db.lease() as connection:
            return {"one": int(await fetch_value(connection, "SELECT 1"))}

    @app.get("/in-a-transaction")
    async def in_a_transaction(seconds: float = 0) -> dict[str, int]:
        if not seconds:
            async with db.transaction() as session:
                return {"one": int(await session.scalar(text("SELECT 1")) or 0)}
        async with db.transaction(statement_timeout=TIMEOUT) as session:
            await session.execute(text(f"SELECT {sleep_function(db)}({seconds})"))
        return {"one": 1}


def sleep_function(db: Database) -> str:
    """The server function that sleeps for its argument's seconds."""
    return "pg_sleep" if db.url.get_backend_name() == "postgresql" else "SLEEP"


# -- Depends(db.leased) -----------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/one", "/one-function-scope"])
async def test_the_endpoint_connection_returns_to_the_pool_before_the_response(
    database_url: str, path: str
) -> None:
    """With either scope, the connection is back in the pool before the response starts, so
    a pool of one serves request after request."""
    async with Database(database_url, **SMALL_POOL) as db:
        app = build_app(db)
        async with helpers.client_for(app) as client:
            responses = [await client.get(path) for _ in range(3)]
    assert [response.status_code for response in responses] == [200] * 3
    assert [response.json() for response in responses] == [{"one": 1}] * 3
    assert app.state.events == ["checkin", "response-start"] * 3


async def test_every_use_in_one_request_gets_the_same_connection(database_url: str) -> None:
    """Two parameters asking for db.leased in one request get one connection."""
    async with Database(database_url, **SMALL_POOL) as db:
        response = await helpers.send(build_app(db), "GET /twice")
    assert response.status_code == 200, response.text
    assert response.json() == {"same": True}


async def test_a_database_error_in_the_endpoint_answers_500_not_503(database_url: str) -> None:
    """A syntax error is a bug: 500; the connection is kept, and serves the next request."""
    async with Database(database_url, **SMALL_POOL) as db:
        async with helpers.client_for(build_app(db)) as client:
            failed = await client.get("/syntax-error")
            after = await client.get("/one")
        stats = db.stats()
    assert failed.status_code == 500
    assert after.status_code == 200
    assert (stats.checked_out, stats.invalidated) == (0, 0)


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_a_backend_terminated_during_a_request_answers_503_connection_lost(
    database_url: str, db: Database
) -> None:
    """A leased connection killed while the endpoint waits gives 503, and leaves the pool."""
    app = build_app(db)
    async with helpers.client_for(app) as client:
        response = await helpers.kill_mid_request(database_url, app, client.get("/hold"))
    stats = db.stats()
    helpers.assert_unavailable(response, "connection_lost")
    assert (stats.checked_out, stats.invalidated) == (0, 1)


# -- exhausted pools, and the exception handlers for code inside an endpoint ------------------


@pytest.mark.parametrize(
    ("path", "status_without_handlers"),
    [("/one", 503), ("/inline", 500), ("/in-a-transaction", 500)],
)
async def test_an_exhausted_pool_answers_503_pool_timeout(
    database_url: str, path: str, status_without_handlers: int
) -> None:
    """While a lease holds the only connection, the endpoint answers 503 with Retry-After.
    ``Depends(db.leased)`` maps the outage by itself; an outage raised in the endpoint's own
    code (a lease block, a db.transaction()) needs add_exception_handlers, or it is a 500."""
    async with Database(database_url, **SHORT_WAIT) as db:
        handled, bare = build_app(db), build_app(db)
        add_exception_handlers(handled)
        async with helpers.client_for(handled) as client, helpers.client_for(bare) as bare_client:
            async with db.lease():
                with anyio.fail_after(5):
                    refused = await client.get(path)
                    unhandled = await bare_client.get(path)
            served = await client.get(path)
        assert db.stats().checked_out == 0
    helpers.assert_unavailable(refused, "pool_timeout")
    assert unhandled.status_code == status_without_handlers
    assert served.status_code == 200


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_with_the_handlers_a_statement_timeout_inside_an_endpoint_answers_504(
    db: Database,
) -> None:
    """A db.transaction() in the endpoint whose statement runs past its timeout: 504."""
    app = build_app(db)
    add_exception_handlers(app)
    with anyio.fail_after(10):
        response = await helpers.send(app, "GET /in-a-transaction", params={"seconds": 2})
    assert response.status_code == 504
    assert response.json()["detail"]["cause"] == "statement_timeout"


# -- the documented example -------------------------------------------------------------------


@pytest.mark.parametrize("db_backend", ["asyncpg"])
async def test_the_fastapi_guide_hot_read_examples_serve_a_note(
    database_url: str, tables: helpers.Tables
) -> None:
    """The two leased-connection examples of docs/fastapi.md (the ``async with`` block, then
    ``Depends(db.leased)`` added to the same app) answer a note, and 404 for none."""
    blocks = python_blocks("docs/fastapi.md")
    start = next(i for i, code in enumerate(blocks) if "db.lease()" in code)
    namespace = run_block(blocks[start], database_url)
    exec(compile(blocks[start + 1], "<docs>", "exec"), namespace)  # noqa: S102 - our own docs
    db, app = namespace["db"], namespace["app"]
    await tables.create("notes", "id INTEGER PRIMARY KEY, text TEXT")
    async with helpers.admin(database_url) as connection:
        await connection.execute(text("INSERT INTO notes VALUES (1, 'hello')"))
    async with db.lifespan(app), helpers.client_for(app) as client:
        found = await client.get("/notes/1")
        missing = await client.get("/notes/2")
        found_text = await client.get("/notes/1/text")
        missing_text = await client.get("/notes/2/text")
    assert found.status_code == 200, found.text
    assert found.json() == {"id": 1, "text": "hello"}
    assert missing.status_code == 404
    assert found_text.json() == "hello"
    assert missing_text.status_code == 404
