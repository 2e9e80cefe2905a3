"""``@db.retry()`` on an endpoint that also holds another Database's request session: each
attempt's work in the other database is rolled back with the retried one's, so a retried
request keeps its work in both once (it kept the other's once per attempt)."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which
# name each test's own Databases.
from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from tests.helpers import Tables, count_rows, send

# A serialization failure (SQLSTATE 40001) raised on demand, as a conflicting transaction would.
CONFLICT = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"


@pytest.fixture
async def other(postgres_url: str) -> AsyncIterator[Database]:
    """A second Database (another pool, another transaction per request) on the same
    server, as an app's billing database would be."""
    async with Database(postgres_url, pool_name="other") as database:
        yield database


@pytest.fixture
async def two_tables(postgres_url: str) -> AsyncIterator[Tables]:
    """A table for each Database's rows, dropped after the test."""
    tables = Tables(postgres_url)
    await tables.create("rt_app", "n INTEGER NOT NULL")
    await tables.create("rt_other", "n INTEGER NOT NULL")
    yield tables
    await tables.drop_all()


def retried_app(db: Database, other: Database, conflict_in: str, runs: list[int]) -> FastAPI:
    """POST /work writes a row through each Database; its first run meets a conflict in the
    session ``conflict_in`` names ("app" or "other")."""
    app = FastAPI()

    @app.post("/work")
    @db.retry()
    async def work(
        session: Annotated[AsyncSession, Depends(db.session)],
        other_session: Annotated[AsyncSession, Depends(other.session)],
    ) -> None:
        runs.append(1)
        await session.execute(text("INSERT INTO rt_app (n) VALUES (1)"))
        await other_session.execute(text("INSERT INTO rt_other (n) VALUES (1)"))
        if len(runs) == 1:
            await (session if conflict_in == "app" else other_session).execute(text(CONFLICT))

    return app


@pytest.mark.parametrize("conflict_in", ["app", "other"])
async def test_a_retried_request_keeps_its_work_in_the_other_database_once(
    postgres_url: str, two_tables: Tables, other: Database, conflict_in: str
) -> None:
    """A conflict in either database runs the endpoint again after both sessions rolled back:
    one row each. (The other's first row was kept beside its second; a conflict in the other
    left its transaction failed, and every attempt then failed: 409 after 3.)"""
    runs: list[int] = []
    async with Database(postgres_url) as db:
        answer = await send(retried_app(db, other, conflict_in, runs), "POST /work")
    assert answer.status_code == 200, answer.text
    assert runs == [1, 1]
    assert await count_rows(postgres_url, "rt_app") == 1
    assert await count_rows(postgres_url, "rt_other") == 1


async def test_a_conflict_after_the_other_session_was_used_before_the_endpoint_is_not_retried(
    postgres_url: str, two_tables: Tables, other: Database
) -> None:
    """A dependency that wrote through the other Database's session before the retried
    endpoint began: running the endpoint alone again would lose that write, as for the
    retried Database's own session, so the request answers 409 and keeps nothing."""
    runs: list[int] = []
    app = FastAPI()

    async def audited(session: Annotated[AsyncSession, Depends(other.session)]) -> None:
        await session.execute(text("INSERT INTO rt_other (n) VALUES (0)"))

    async with Database(postgres_url) as db:

        @app.post("/work", dependencies=[Depends(audited)])
        @db.retry()
        async def work(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
            runs.append(1)
            await session.execute(text(CONFLICT))

        answer = await send(app, "POST /work")
    assert answer.status_code == 409, answer.text
    assert "had run statements before it began" in answer.json()["detail"]["message"]
    assert runs == [1]
    assert await count_rows(postgres_url, "rt_other") == 0
