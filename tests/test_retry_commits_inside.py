"""A retried unit whose attempt saw another unit of work commit (another Database's
``transaction()``, another Database's ``@retry()`` stacked under the decorator, or a
``transaction()`` of its own Database) is not run again after a conflict: the other unit's
work is kept already, and a second run kept it twice."""

# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations, which
# name the test's own Databases.
from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, RetriesExhaustedError
from tests.helpers import Tables, admin, count_rows, send

# A serialization failure (SQLSTATE 40001) raised on demand, as a conflicting transaction would.
CONFLICT = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"
# The same at COMMIT, once: a deferred trigger, counted by a sequence no rollback resets.
CONFLICT_AT_COMMIT = [
    "CREATE SEQUENCE rc_fails",
    """CREATE FUNCTION rc_fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF nextval('rc_fails') = 1 THEN
        RAISE EXCEPTION 'conflict at commit' USING ERRCODE = '40001';
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE CONSTRAINT TRIGGER rc_fail AFTER INSERT ON rc_app DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION rc_fail_once()""",
]


@pytest.fixture
async def other(postgres_url: str) -> AsyncIterator[Database]:
    """A second Database on the same server, as an app's billing database would be."""
    async with Database(postgres_url, pool_name="other") as database:
        yield database


@pytest.fixture
async def two_tables(postgres_url: str) -> AsyncIterator[Tables]:
    """A table for each Database's rows, dropped after the test."""
    tables = Tables(postgres_url)
    await tables.create("rc_app", "n INTEGER NOT NULL")
    await tables.create("rc_other", "n INTEGER NOT NULL")
    yield tables
    await tables.drop_all()


@pytest.fixture
async def conflict_at_commit(postgres_url: str, two_tables: Tables) -> AsyncIterator[None]:
    """rc_app's first transaction that inserts fails at its COMMIT with a conflict."""
    async with admin(postgres_url) as connection:
        for statement in CONFLICT_AT_COMMIT:
            await connection.execute(text(statement))
    yield
    async with admin(postgres_url) as connection:
        await connection.execute(text("DROP TRIGGER IF EXISTS rc_fail ON rc_app"))
        await connection.execute(text("DROP FUNCTION rc_fail_once()"))
        await connection.execute(text("DROP SEQUENCE rc_fails"))


async def test_stacked_retries_keep_the_inner_databases_work_once(
    postgres_url: str, conflict_at_commit: None, other: Database
) -> None:
    """@db.retry() over @other.retry(): other's loop commits its unit, then db's COMMIT
    conflicts. Running the endpoint again kept other's row twice and answered 200; now the
    conflict is not retried (409), and other's row is kept once."""
    runs: list[int] = []
    app = FastAPI()
    async with Database(postgres_url) as db:

        @app.post("/work")
        @db.retry(backoff=0)
        @other.retry(backoff=0)
        async def work(
            session: Annotated[AsyncSession, Depends(db.session)],
            other_session: Annotated[AsyncSession, Depends(other.session)],
        ) -> None:
            runs.append(1)
            await session.execute(text("INSERT INTO rc_app (n) VALUES (1)"))
            await other_session.execute(text("INSERT INTO rc_other (n) VALUES (1)"))

        answer = await send(app, "POST /work")
    assert answer.status_code == 409, answer.text
    assert "another unit of work committed inside it" in answer.json()["detail"]["message"]
    assert runs == [1]
    assert await count_rows(postgres_url, "rc_other") == 1
    assert await count_rows(postgres_url, "rc_app") == 0


@pytest.mark.parametrize("inner", ["other", "own"])
async def test_a_transaction_committed_inside_an_attempt_is_not_run_again(
    postgres_url: str, two_tables: Tables, other: Database, inner: str
) -> None:
    """db.retrying() whose attempt commits a transaction() (another Database's, or its own
    Database's) and then meets a conflict: RetriesExhaustedError, the transaction's row once
    (a second attempt kept it again)."""
    runs: list[int] = []

    async def retried(db: Database, committer: Database) -> None:
        async for attempt in db.retrying(backoff=0):
            async with attempt as session:
                runs.append(1)
                async with committer.transaction() as inside:
                    await inside.execute(text("INSERT INTO rc_other (n) VALUES (1)"))
                await session.execute(text(CONFLICT))

    async with Database(postgres_url) as db:
        committer = other if inner == "other" else db
        with pytest.raises(RetriesExhaustedError, match="another unit of work committed"):
            await retried(db, committer)
    assert runs == [1]
    assert await count_rows(postgres_url, "rc_other") == 1


async def test_an_attempt_after_a_commit_in_an_earlier_attempt_is_retried(
    postgres_url: str, two_tables: Tables, other: Database
) -> None:
    """Only commits inside the failing attempt count: a transaction() committed before the
    loop is not the attempt's, and a conflict in an attempt that committed nothing else is
    retried as before."""
    runs: list[int] = []
    async with Database(postgres_url) as db:
        async with other.transaction() as before:
            await before.execute(text("INSERT INTO rc_other (n) VALUES (1)"))
        retrying = db.retrying(backoff=0)
        async for attempt in retrying:
            async with attempt as session:
                runs.append(1)
                await session.execute(text("INSERT INTO rc_app (n) VALUES (1)"))
                if len(runs) == 1:
                    await session.execute(text(CONFLICT))
    assert retrying.retries == 1
    assert await count_rows(postgres_url, "rc_app") == 1
