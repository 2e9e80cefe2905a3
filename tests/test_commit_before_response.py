"""A request's transaction commits before its response is sent, seen from a real HTTP client.

These tests talk HTTP to uvicorn in a subprocess (tests/apps/commit_app.py): an in-process
client would raise a failed commit in the test instead of showing the status a server sends.
Every read goes through an engine of the test's own, never through the app.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from tests.server import running_server

pytestmark = pytest.mark.server

APP = "commit_app:app"


async def run(connection: AsyncConnection, *statements: str) -> None:
    """Execute each statement in turn on an autocommit connection."""
    for statement in statements:
        await connection.execute(text(statement))


async def count(connection: AsyncConnection, query: str, **params: object) -> int:
    """The single integer ``query`` returns."""
    return int((await connection.execute(text(query), params)).scalar_one())


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "psycopg"])
async def test_a_write_whose_commit_fails_never_gets_a_2xx(database_url: str) -> None:
    """A deferred foreign key that fails at COMMIT gives an error status and stores nothing."""
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await run(
                connection,
                "DROP TABLE IF EXISTS cbr_child",
                "DROP TABLE IF EXISTS cbr_parent",
                "CREATE TABLE cbr_parent (id INTEGER PRIMARY KEY)",
                "CREATE TABLE cbr_child (parent_id INTEGER NOT NULL REFERENCES cbr_parent (id)"
                " DEFERRABLE INITIALLY DEFERRED)",
                "INSERT INTO cbr_parent (id) VALUES (1)",
            )
            with running_server(APP, {"DATABASE_URL": database_url}) as base_url:
                async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
                    valid = await client.post("/children/1")
                    orphan = await client.post("/children/2")
            stored = await count(connection, "SELECT count(*) FROM cbr_child")
            await run(connection, "DROP TABLE cbr_child", "DROP TABLE cbr_parent")
    finally:
        await engine.dispose()
    assert valid.status_code == 200  # the endpoint itself works: only the COMMIT can fail
    assert not orphan.is_success, orphan.text
    assert orphan.status_code == 409  # the constraint failed at COMMIT, after the endpoint
    assert orphan.json()["detail"]["cause"] == "constraint_violation"
    assert stored == 1


async def test_every_acknowledged_write_is_visible_to_the_next_reader(database_url: str) -> None:
    """200 times in a row, a row whose POST got 200 is already there for another connection."""
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    missing: list[int] = []
    try:
        async with engine.connect() as connection:
            await run(
                connection,
                "DROP TABLE IF EXISTS cbr_rows",
                "CREATE TABLE cbr_rows (value INTEGER NOT NULL)",
            )
            with running_server(APP, {"DATABASE_URL": database_url}) as base_url:
                async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
                    for value in range(200):
                        response = await client.post(f"/rows/{value}")
                        assert response.status_code == 200, response.text
                        query = "SELECT count(*) FROM cbr_rows WHERE value = :value"
                        if await count(connection, query, value=value) != 1:
                            missing.append(value)
            await run(connection, "DROP TABLE cbr_rows")
    finally:
        await engine.dispose()
    assert missing == []
