"""An app's own yield dependency that commits after ``yield`` commits after the response.

Since FastAPI 0.118 the code after ``yield`` in a dependency of the default scope runs once
the response has been sent; ``Depends(..., scope="function")`` runs it before. This holds for
any such dependency, a ``db.transaction()`` block around the ``yield`` included, which is why
docs/migration.md says to move them all. The app (tests/apps/yield_commit_app.py) runs under
uvicorn in a subprocess: an in-process client would raise the failed commit in the test.
Figures are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.helpers import admin
from tests.server import running_server

pytestmark = pytest.mark.server

APP = "yield_commit_app:app"
WRITES = 300
RecordProperty = Callable[[str, object], None]


@contextlib.asynccontextmanager
async def tables(database_url: str, *statements: str) -> AsyncIterator[AsyncConnection]:
    """Run ``statements`` (DROP/CREATE) on an autocommit connection, yield it, drop the
    tables they created."""
    created = [statement.split()[2] for statement in statements if statement.startswith("CREATE")]
    async with admin(database_url) as connection:
        for table in reversed(created):
            await connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        for statement in statements:
            await connection.execute(text(statement))
        yield connection
        for table in reversed(created):
            await connection.execute(text(f"DROP TABLE {table}"))


ROWS = ("CREATE TABLE yd_rows (value INTEGER NOT NULL)",)
# A foreign key checked only at COMMIT (PostgreSQL): the parent 1 exists, no other.
CHILDREN = (
    "CREATE TABLE yd_parent (id INTEGER PRIMARY KEY)",
    "CREATE TABLE yd_child (parent_id INTEGER NOT NULL REFERENCES yd_parent (id)"
    " DEFERRABLE INITIALLY DEFERRED)",
    "INSERT INTO yd_parent (id) VALUES (1)",
)


async def post_orphan(database_url: str, scope: str) -> tuple[httpx.Response, int]:
    """POST a child of a parent that does not exist; the response and the children stored."""
    async with tables(database_url, *CHILDREN) as connection:
        with running_server(APP, {"DATABASE_URL": database_url}) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
                response = await client.post(f"/{scope}/children/2")
        stored = int(await connection.scalar(text("SELECT count(*) FROM yd_child")) or 0)
    return response, stored


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
@pytest.mark.parametrize(("scope", "status"), [("request-scoped", 200), ("function-scoped", 500)])
async def test_a_commit_that_fails_answers_200_only_from_a_request_scoped_dependency(
    database_url: str, scope: str, status: int
) -> None:
    """A request-scoped dependency commits after the response: the client has a 200. With
    scope="function" it commits before: the client has a 500. Nothing is stored either way."""
    response, stored = await post_orphan(database_url, scope)
    assert response.status_code == status
    assert stored == 0


async def unseen_writes(
    client: httpx.AsyncClient, connection: AsyncConnection, scope: str, values: range
) -> list[int]:
    """POST a row of each of ``values``, one after another, through ``scope``'s route; those
    not yet visible on ``connection`` when their 200 arrived."""
    unseen: list[int] = []
    query = text("SELECT count(*) FROM yd_rows WHERE value = :value")
    for value in values:
        response = await client.post(f"/{scope}/rows/{value}")
        assert response.status_code == 200, response.text
        if await connection.scalar(query, {"value": value}) != 1:
            unseen.append(value)
    return unseen


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "psycopg", "asyncmy"])
async def test_every_write_of_a_function_scoped_dependency_is_visible_at_its_200(
    database_url: str, db_backend: str, record_property: RecordProperty
) -> None:
    """300 writes through scope="function": each is there when its 200 arrives. The same
    writes through the default scope are counted beside them, for the docs."""
    async with tables(database_url, *ROWS) as connection:
        with running_server(APP, {"DATABASE_URL": database_url}) as base_url:
            async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
                writes = range(WRITES)
                function_scoped = await unseen_writes(client, connection, "function-scoped", writes)
                # The same number of writes, their values after the first ones'.
                writes = range(WRITES, 2 * WRITES)
                request_scoped = await unseen_writes(client, connection, "request-scoped", writes)
    print(
        f"\n[{db_backend}] writes not yet visible at their 200, of {WRITES}: "
        f"request scope {len(request_scoped)}, function scope {len(function_scoped)}"
    )
    record_property("unseen_request_scoped", len(request_scoped))
    assert function_scoped == []
