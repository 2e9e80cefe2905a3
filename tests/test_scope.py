"""One session per unit of work: shared by everything in a request, reachable from services.

No ``from __future__ import annotations``: the endpoints use a ``Session`` alias built inside a
function.
"""

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, NoSessionError
from tests.helpers import Tables, client_for, send, stored
from tests.websocket_client import ANSWER_TIMEOUT, WebSocketClient

TABLE = "scope_rows"


class SavepointUndone(Exception):
    """Raised inside a savepoint to roll it back."""


class BusinessRuleBroken(Exception):
    """An application error that a transaction must let through unchanged."""


def build_app(db: Database) -> FastAPI:
    """Endpoints that compare sessions, commit mid-request and use a savepoint."""
    app = FastAPI(lifespan=db.lifespan)
    seen: list[AsyncSession] = []
    app.state.seen = seen
    add_sharing_routes(app, db, seen)
    add_writing_routes(app, db)
    return app


def add_sharing_routes(app: FastAPI, db: Database, seen: list[AsyncSession]) -> None:
    """``/same-session`` compares its dependencies' sessions; ``/remember`` notes its own."""
    Session = Annotated[AsyncSession, Depends(db.session)]

    def service_session_id() -> int:
        # A service function: no parameters, it finds the session of the running request.
        return id(db.current_session())

    async def yielding(session: Session) -> AsyncIterator[int]:
        # The user's own request-scoped yield dependency.
        yield id(session)

    async def plain(session: Session) -> int:
        return id(session)

    def plain_sync(session: Session) -> int:
        return id(session)

    async def nested(session: Session, inner: Annotated[int, Depends(plain)]) -> int:
        return id(session) if inner == id(session) else -1

    @app.get("/same-session")
    async def same_session(
        session: Session,
        from_yield: Annotated[int, Depends(yielding)],
        from_plain: Annotated[int, Depends(plain)],
        from_sync: Annotated[int, Depends(plain_sync)],
        from_nested: Annotated[int, Depends(nested)],
    ) -> dict[str, bool]:
        mine = id(session)
        return {
            "yield_dependency": from_yield == mine,
            "plain_dependency": from_plain == mine,
            "sync_dependency": from_sync == mine,
            "nested_dependency": from_nested == mine,
            "service": service_session_id() == mine,
        }

    @app.get("/remember")
    async def remember(session: Session) -> None:
        seen.append(session)


def add_writing_routes(app: FastAPI, db: Database) -> None:
    """``/commit-then-fail`` commits mid-request; ``/savepoint`` rolls a savepoint back."""
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/commit-then-fail")
    async def commit_then_fail(session: Session) -> None:
        await insert(session, 1)
        await session.commit()
        await insert(session, 2)
        raise HTTPException(status_code=409, detail="second row refused")

    @app.post("/savepoint")
    async def savepoint(session: Session) -> dict[str, bool]:
        await insert(session, 1)
        try:
            async with session.begin_nested():
                await insert(session, 2)
                raise SavepointUndone
        except SavepointUndone:
            pass
        await insert(session, 3)
        return {"done": True}


async def insert(session: AsyncSession, value: int) -> None:
    """Add one row to the test table."""
    await session.execute(text(f"INSERT INTO {TABLE} (value) VALUES (:v)"), {"v": value})


@pytest.fixture
async def scope_rows(tables: Tables) -> None:
    """An empty test table."""
    await tables.create(TABLE, "value INTEGER")


async def rows(db: Database) -> list[int]:
    """The values stored in the test table, in order."""
    return await stored(db, f"SELECT value FROM {TABLE} ORDER BY value")


async def post_then_rows(db: Database, path: str) -> tuple[int, list[int]]:
    """POST ``path`` to the app, inside its lifespan: the status, and the values stored."""
    app = build_app(db)
    async with app.router.lifespan_context(app):
        response = await send(app, f"POST {path}")
        return response.status_code, await rows(db)


async def insert_then_raise(db: Database, error: Exception) -> None:
    """Insert a row in a db.transaction() block, then raise ``error`` inside it."""
    async with db.transaction() as session:
        await insert(session, 7)
        raise error


# -- one session per request ------------------------------------------------------------------


async def test_every_dependency_and_service_share_the_request_session(database_url: str) -> None:
    """Endpoint, yield/plain/sync/nested dependencies and current_session() agree on one session."""
    db = Database(database_url)
    app = build_app(db)
    async with app.router.lifespan_context(app), client_for(app) as client:
        response = await client.get("/same-session")
    assert response.status_code == 200
    assert response.json() == {
        "yield_dependency": True,
        "plain_dependency": True,
        "sync_dependency": True,
        "nested_dependency": True,
        "service": True,
    }


async def test_two_requests_get_two_sessions(sqlite_url: str) -> None:
    """Consecutive requests never share a session object."""
    db = Database(sqlite_url)
    app = build_app(db)
    async with app.router.lifespan_context(app), client_for(app) as client:
        for _ in range(2):
            assert (await client.get("/remember")).status_code == 200
    first, second = app.state.seen
    assert first is not second


# -- current_session() ------------------------------------------------------------------------


async def test_current_session_outside_a_unit_of_work_says_where_sessions_exist(
    sqlite_url: str,
) -> None:
    """current_session() on a connected Database, outside any unit, raises NoSessionError."""
    db = Database(sqlite_url)
    async with db:
        with pytest.raises(NoSessionError) as info:
            db.current_session()
    assert "db.session" in str(info.value)
    assert "db.transaction()" in str(info.value)


async def test_current_session_is_the_transaction_session_until_the_block_ends(
    database_url: str,
) -> None:
    """Inside db.transaction() current_session() is its session; after the block it raises."""
    db = Database(database_url)
    async with db:
        async with db.transaction() as session:
            assert db.current_session() is session
        with pytest.raises(NoSessionError):
            db.current_session()


async def test_a_nested_transaction_restores_the_outer_session(database_url: str) -> None:
    """After an inner db.transaction() block, current_session() is the outer session again."""
    db = Database(database_url)
    async with db:
        async with db.transaction() as outer:
            async with db.transaction() as inner:
                assert inner is not outer
                assert db.current_session() is inner
            assert db.current_session() is outer
        with pytest.raises(NoSessionError):
            db.current_session()


@pytest.mark.usefixtures("scope_rows")
async def test_a_service_writes_through_current_session_beside_a_read_session(db: Database) -> None:
    """A request that depends on db.session, then on db.read_session (the signed-in user,
    entered last): current_session() is the writable unit's, whose commit the request's
    writes wait for, as on_commit() and @db.retry() take it. It was the read-only one, and
    the service's INSERT failed (a 500)."""
    app = FastAPI()

    async def signed_in(session: Annotated[AsyncSession, Depends(db.read_session)]) -> int:
        return id(session)

    @app.post("/rows")
    async def add(
        session: Annotated[AsyncSession, Depends(db.session)],
        reader: Annotated[int, Depends(signed_in)],
    ) -> dict[str, bool]:
        await insert(db.current_session(), 5)  # a service function's write
        return {"writable": db.current_session() is session}

    async with client_for(app) as client:
        response = await client.post("/rows")
    assert response.status_code == 200, response.text
    assert response.json() == {"writable": True}
    assert await rows(db) == [5]


# -- how a transaction ends -------------------------------------------------------------------


@pytest.mark.usefixtures("scope_rows")
async def test_a_transaction_commits_when_its_block_ends_normally(db: Database) -> None:
    """Rows written in a db.transaction() block that ends normally are stored."""
    async with db.transaction() as session:
        await insert(session, 7)
    assert await rows(db) == [7]


@pytest.mark.usefixtures("scope_rows")
async def test_a_transaction_rolls_back_and_lets_the_error_through(db: Database) -> None:
    """An exception in the block rolls the rows back and propagates as the same object."""
    error = BusinessRuleBroken("no")
    with pytest.raises(BusinessRuleBroken) as info:
        await insert_then_raise(db, error)
    assert await rows(db) == []
    assert info.value is error


# -- inside a request -------------------------------------------------------------------------


@pytest.mark.usefixtures("scope_rows")
async def test_an_explicit_commit_mid_request_keeps_what_it_committed(database_url: str) -> None:
    """A commit() mid-request stores its rows; the error after it rolls back only the rest."""
    assert await post_then_rows(Database(database_url), "/commit-then-fail") == (409, [1])


@pytest.mark.usefixtures("scope_rows")
async def test_a_rolled_back_savepoint_keeps_the_rest_of_the_request(database_url: str) -> None:
    """A savepoint rolled back by an exception undoes its rows only; the request commits."""
    assert await post_then_rows(Database(database_url), "/savepoint") == (200, [1, 3])


@pytest.mark.parametrize("db_backend", ["sqlite"])
@pytest.mark.parametrize("dependency", ["session", "leased"])
async def test_a_websocket_that_asks_for_the_request_unit_is_told_to_open_one_per_message(
    db: Database, dependency: str
) -> None:
    """``Depends(db.session)`` or ``Depends(db.leased)`` in a WebSocket route raises
    NoSessionError naming what to use per message, and holds no connection."""
    app = FastAPI()
    provider = getattr(db, dependency)

    @app.websocket("/ws")
    async def socket(connection: Annotated[object, Depends(provider)]) -> None:
        raise AssertionError("never reached")

    websocket = WebSocketClient(app, "/ws")
    await websocket.inbox.put({"type": "websocket.connect"})

    with pytest.raises(NoSessionError, match=r"not WebSockets.*Open one per message") as refused:
        await asyncio.wait_for(websocket.app, ANSWER_TIMEOUT)
    per_message = "db.transaction() as session" if dependency == "session" else "db.lease()"
    assert per_message in str(refused.value)
    assert db.stats().checked_out == 0


async def test_a_unit_inside_a_request_that_waits_for_itself_says_so(database_url: str) -> None:
    """A db.transaction() inside a request, on a pool the request's own unit holds whole,
    waits for itself: the 503 says so and names the fix, not only "overloaded" (a retry
    never frees that connection)."""
    db = Database(database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    app = FastAPI()

    @app.post("/inner")
    async def inner(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
        await session.execute(text("SELECT 1"))
        async with db.transaction() as second:
            await second.execute(text("SELECT 2"))

    async with db, client_for(app) as client:
        answer = await client.post("/inner")
    assert answer.status_code == 503
    assert "waits for itself" in answer.json()["detail"]["message"]
    assert "session.begin_nested()" in answer.json()["detail"]["message"]
