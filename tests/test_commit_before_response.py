"""A request's transaction commits before its response is sent, seen from a real HTTP client.

These tests talk HTTP to uvicorn in a subprocess (tests/apps/commit_app.py): an in-process
client would raise a failed commit in the test instead of showing the status a server sends.
Every read goes through a connection of the test's own, never through the app.
"""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import text

from tests.helpers import Tables, admin, count_rows
from tests.server import running_server

pytestmark = pytest.mark.server

APP = "commit_app:app"


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "psycopg"])
async def test_a_write_whose_commit_fails_never_gets_a_2xx(
    database_url: str, tables: Tables
) -> None:
    """A deferred foreign key that fails at COMMIT gives an error status and stores nothing."""
    await tables.create("cbr_parent", "id INTEGER PRIMARY KEY")
    references = "REFERENCES cbr_parent (id) DEFERRABLE INITIALLY DEFERRED"
    await tables.create("cbr_child", f"parent_id INTEGER NOT NULL {references}")
    async with admin(database_url) as connection:
        await connection.execute(text("INSERT INTO cbr_parent (id) VALUES (1)"))
    with running_server(APP, {"DATABASE_URL": database_url}) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            valid = await client.post("/children/1")
            orphan = await client.post("/children/2")
    stored = await count_rows(database_url, "cbr_child")
    assert valid.status_code == 200  # the endpoint itself works: only the COMMIT can fail
    assert not orphan.is_success, orphan.text
    assert orphan.status_code == 409  # the constraint failed at COMMIT, after the endpoint
    assert orphan.json()["detail"]["cause"] == "constraint_violation"
    assert stored == 1


async def test_every_acknowledged_write_is_visible_to_the_next_reader(
    database_url: str, tables: Tables
) -> None:
    """200 times in a row, a row whose POST got 200 is already there for another connection."""
    await tables.create("cbr_rows", "value INTEGER NOT NULL")
    query = text("SELECT count(*) FROM cbr_rows WHERE value = :value")
    missing: list[int] = []
    with running_server(APP, {"DATABASE_URL": database_url}) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
            for value in range(200):
                response = await client.post(f"/rows/{value}")
                assert response.status_code == 200, response.text
                # A connection opened after the 200: none is held across the server's life.
                async with admin(database_url) as reader:
                    if await reader.scalar(query, {"value": value}) != 1:
                        missing.append(value)
    assert missing == []
