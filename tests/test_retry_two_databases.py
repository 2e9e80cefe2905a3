"""Retries across two Databases. ``@db.retry()`` on an endpoint that also holds another
Database's request session: each attempt's work in the other database is rolled back with the
retried one's, so a retried request keeps its work in both once (it kept the other's once per
attempt). A retried unit whose attempt saw another unit of work commit (another Database's
``transaction()``, another Database's ``@retry()`` stacked under the decorator, or a
``transaction()`` of its own Database) is not run again after a conflict: the other unit's
work is kept already, and a second run kept it twice."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which
# name each test's own Databases.
import asyncio
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
    "CREATE SEQUENCE rt_fails",
    """CREATE FUNCTION rt_fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      IF nextval('rt_fails') = 1 THEN
        RAISE EXCEPTION 'conflict at commit' USING ERRCODE = '40001';
      END IF;
      RETURN NULL;
    END $$""",
    """CREATE CONSTRAINT TRIGGER rt_fail AFTER INSERT ON rt_app DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION rt_fail_once()""",
]


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


def retried_app(
    db: Database,
    other: Database,
    runs: list[int],
    *,
    conflict_in: str | None = None,
    stacked: bool = False,
) -> FastAPI:
    """POST /work, under @db.retry() (over @other.retry() if ``stacked``), writes a row
    through each Database; its first run meets a conflict in the session ``conflict_in``
    names ("app" or "other"), if any."""
    app = FastAPI()

    async def work(
        session: Annotated[AsyncSession, Depends(db.session)],
        other_session: Annotated[AsyncSession, Depends(other.session)],
    ) -> None:
        runs.append(1)
        await session.execute(text("INSERT INTO rt_app (n) VALUES (1)"))
        await other_session.execute(text("INSERT INTO rt_other (n) VALUES (1)"))
        if conflict_in is not None and len(runs) == 1:
            await (session if conflict_in == "app" else other_session).execute(text(CONFLICT))

    endpoint = other.retry(backoff=0)(work) if stacked else work
    app.post("/work")(db.retry(backoff=0)(endpoint))
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
        answer = await send(retried_app(db, other, runs, conflict_in=conflict_in), "POST /work")
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


# -- units that committed inside an attempt ----------------------------------------------------


@pytest.fixture
async def conflict_at_commit(postgres_url: str, two_tables: Tables) -> AsyncIterator[None]:
    """rt_app's first transaction that inserts fails at its COMMIT with a conflict."""
    async with admin(postgres_url) as connection:
        for statement in CONFLICT_AT_COMMIT:
            await connection.execute(text(statement))
    yield
    async with admin(postgres_url) as connection:
        await connection.execute(text("DROP TRIGGER IF EXISTS rt_fail ON rt_app"))
        await connection.execute(text("DROP FUNCTION rt_fail_once()"))
        await connection.execute(text("DROP SEQUENCE rt_fails"))


async def test_stacked_retries_keep_the_inner_databases_work_once(
    postgres_url: str, conflict_at_commit: None, other: Database
) -> None:
    """@db.retry() over @other.retry(): other's loop commits its unit, then db's COMMIT
    conflicts. Running the endpoint again kept other's row twice and answered 200; now the
    conflict is not retried (409), and other's row is kept once."""
    runs: list[int] = []
    async with Database(postgres_url) as db:
        app = retried_app(db, other, runs, stacked=True)
        answer = await send(app, "POST /work")
    assert answer.status_code == 409, answer.text
    assert "another unit of work committed inside it" in answer.json()["detail"]["message"]
    assert runs == [1]
    assert await count_rows(postgres_url, "rt_other") == 1
    assert await count_rows(postgres_url, "rt_app") == 0


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
                    await inside.execute(text("INSERT INTO rt_other (n) VALUES (1)"))
                await session.execute(text(CONFLICT))

    async with Database(postgres_url) as db:
        committer = other if inner == "other" else db
        with pytest.raises(RetriesExhaustedError, match="another unit of work committed"):
            await retried(db, committer)
    assert runs == [1]
    assert await count_rows(postgres_url, "rt_other") == 1


async def test_an_attempt_after_a_commit_in_an_earlier_attempt_is_retried(
    postgres_url: str, two_tables: Tables, other: Database
) -> None:
    """Only commits inside the failing attempt count: a transaction() committed before the
    loop is not the attempt's, and a conflict in an attempt that committed nothing else is
    retried as before."""
    runs: list[int] = []
    async with Database(postgres_url) as db:
        async with other.transaction() as before:
            await before.execute(text("INSERT INTO rt_other (n) VALUES (1)"))
        retrying = db.retrying(backoff=0)
        async for attempt in retrying:
            async with attempt as session:
                runs.append(1)
                await session.execute(text("INSERT INTO rt_app (n) VALUES (1)"))
                if len(runs) == 1:
                    await session.execute(text(CONFLICT))
    assert retrying.retries == 1
    assert await count_rows(postgres_url, "rt_app") == 1


async def test_attempts_side_by_side_inside_an_attempt_count_only_their_own_commits(
    postgres_url: str, two_tables: Tables, other: Database
) -> None:
    """Two retried units in tasks of one outer attempt (``gather``): the second commits while
    the first's attempt runs, then the first meets a conflict. The second's commit is no part
    of the first's work, so the first is retried (it was refused as having committed: the
    two shared the outer attempt's count); the outer attempt sees both commits."""
    second_committed = asyncio.Event()
    runs: list[int] = []

    async def first(db: Database) -> None:
        async for attempt in db.retrying(backoff=0):
            async with attempt as session:
                runs.append(1)
                await session.execute(text("INSERT INTO rt_app (n) VALUES (1)"))
                if len(runs) == 1:
                    await second_committed.wait()
                    await session.execute(text(CONFLICT))

    async def second() -> None:
        async for attempt in other.retrying(backoff=0):
            async with attempt as session:
                await session.execute(text("INSERT INTO rt_other (n) VALUES (1)"))
        second_committed.set()

    async with Database(postgres_url) as db:
        async for attempt in db.retrying(attempts=1):
            async with attempt:
                await asyncio.gather(first(db), second())
    assert runs == [1, 1]
    assert await count_rows(postgres_url, "rt_app") == 1
    assert await count_rows(postgres_url, "rt_other") == 1


def read_and_write_app(db: Database, runs: list[int], *, session_first: bool) -> FastAPI:
    """POST /work under @db.retry(), depending on db.session and on a dependency that reads
    the signed-in user through db.read_session, in the order ``session_first`` says; its
    first run meets a conflict."""
    app = FastAPI()

    async def current_user(session: Annotated[AsyncSession, Depends(db.read_session)]) -> str:
        return str(await session.scalar(text("SELECT current_user")))

    async def write(session: AsyncSession, user: str) -> str:
        runs.append(1)
        await session.execute(text("INSERT INTO rt_app (n) VALUES (1)"))
        if len(runs) == 1:
            await session.execute(text(CONFLICT))
        return user

    async def session_first_work(
        session: Annotated[AsyncSession, Depends(db.session)],
        user: Annotated[str, Depends(current_user)],
    ) -> str:
        return await write(session, user)

    async def user_first_work(
        user: Annotated[str, Depends(current_user)],
        session: Annotated[AsyncSession, Depends(db.session)],
    ) -> str:
        return await write(session, user)

    work = session_first_work if session_first else user_first_work
    app.post("/work")(db.retry(backoff=0)(work))
    return app


@pytest.mark.parametrize("session_first", [False, True])
async def test_a_read_only_request_unit_beside_the_session_leaves_conflicts_retried(
    postgres_url: str, two_tables: Tables, session_first: bool
) -> None:
    """A dependency that read through Depends(db.read_session) (the signed-in user) beside
    the retried endpoint's Depends(db.session): a read-only unit keeps nothing across
    attempts, so the conflict is retried as without it (it answered 409, "had run statements
    before it began"), and what the dependency loaded is not rolled back under the endpoint.
    With db.session listed first, the read-only unit, entered last, is the one running, but
    the attempts are the writable unit's (they were the read-only one's, which commits none)."""
    runs: list[int] = []
    async with Database(postgres_url) as db:
        answer = await send(read_and_write_app(db, runs, session_first=session_first), "POST /work")
    assert answer.status_code == 200, answer.text
    assert runs == [1, 1]
    assert await count_rows(postgres_url, "rt_app") == 1
