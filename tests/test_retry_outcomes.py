"""What a retried unit of work keeps: only what a unit without retries would keep, once.

``@db.retry()`` commits each attempt itself, so that a conflict at COMMIT is retried too; these
tests hold that commit to the unit's own verdict (an error status, a read-only session) and
keep a retry from repeating work an attempt had already committed.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, which
# name each test's own Database.
import functools
from collections.abc import AsyncIterator, Awaitable
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, Response
from sqlalchemy import String, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import ConfigurationError, Database, RetriesExhaustedError
from tests.helpers import Tables, app_with, count_rows, send, stored


class Base(DeclarativeBase):
    pass


class Email(Base):
    """An address, unique as the primary key."""

    __tablename__ = "ro_emails"
    email: Mapped[str] = mapped_column(String(20), primary_key=True)


# A serialization failure (SQLSTATE 40001) raised on demand, as a conflicting transaction would.
CONFLICT = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"


async def test_a_retried_endpoint_that_sets_an_error_status_keeps_nothing(
    db: Database, tables: Tables, database_url: str
) -> None:
    """Under @db.retry(), an endpoint that answers 400 through its Response is rolled back."""
    await tables.create("ro_notes", "text VARCHAR(20) NOT NULL")
    app = FastAPI()

    @app.post("/notes")
    @db.retry()
    async def refuse(
        session: Annotated[AsyncSession, Depends(db.session)], response: Response
    ) -> dict[str, str]:
        await session.execute(text("INSERT INTO ro_notes (text) VALUES ('refused')"))
        response.status_code = 400
        return {"detail": "refused"}

    answer = await send(app, "POST /notes")
    assert answer.status_code == 400
    assert await count_rows(database_url, "ro_notes") == 0


async def test_a_retried_endpoint_whose_commit_violates_a_constraint_answers_409(
    db: Database, tables: Tables, database_url: str
) -> None:
    """A unique constraint failing at @db.retry()'s commit answers 409 naming it, as without
    the decorator (it was a 500 with the driver's traceback), and is not retried."""
    await tables.create_all(Base.metadata)
    runs: list[int] = []

    @db.retry()
    async def add(session: AsyncSession) -> None:
        runs.append(1)
        session.add(Email(email="a@x"))  # flushed by the commit

    app = app_with(db.session, {"POST /emails": add})
    first = await send(app, "POST /emails")
    second = await send(app, "POST /emails")
    assert (first.status_code, second.status_code) == (200, 409), second.text
    assert second.json()["detail"]["cause"] == "constraint_violation"
    assert runs == [1, 1]
    assert await count_rows(database_url, "ro_emails") == 1


@pytest.mark.parametrize("db_backend", ["sqlite"])
async def test_a_retried_read_session_keeps_no_write_on_sqlite(
    db: Database, tables: Tables, database_url: str
) -> None:
    """SQLite has no read-only transaction: under @db.retry() too, a read session's write
    keeps nothing (refused by the query-only connection, as on the servers: 500)."""
    await tables.create("ro_notes", "text VARCHAR(20) NOT NULL")
    app = FastAPI()

    @app.post("/notes")
    @db.retry()
    async def write(session: Annotated[AsyncSession, Depends(db.read_session)]) -> None:
        await session.execute(text("INSERT INTO ro_notes (text) VALUES ('read')"))

    assert (await send(app, "POST /notes")).status_code == 500
    assert await count_rows(database_url, "ro_notes") == 0


async def charge_twice_in_retrying(db: Database, runs: list[int]) -> None:
    """In db.retrying(): insert and commit, then meet a conflict."""
    async for attempt in db.retrying():
        async with attempt as session:
            runs.append(2)
            await session.execute(text("INSERT INTO ro_charges (amount) VALUES (20)"))
            await session.commit()
            await session.execute(text(CONFLICT))


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_conflict_after_an_explicit_commit_is_not_retried(
    db: Database, tables: Tables, database_url: str
) -> None:
    """An attempt that committed part of its work before a conflict is not run again: its
    committed part is kept once, and the request answers 409."""
    await tables.create("ro_charges", "amount INTEGER NOT NULL")
    runs: list[int] = []
    app = FastAPI()

    @app.post("/charge")
    @db.retry()
    async def charge(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
        runs.append(1)
        await session.execute(text("INSERT INTO ro_charges (amount) VALUES (10)"))
        await session.commit()
        await session.execute(text(CONFLICT))

    answer = await send(app, "POST /charge")
    assert answer.status_code == 409, answer.text
    assert answer.json()["detail"]["cause"] == "conflict"
    assert runs == [1]
    assert await count_rows(database_url, "ro_charges") == 1

    with pytest.raises(RetriesExhaustedError, match="after it had committed part of its work"):
        await charge_twice_in_retrying(db, runs)
    assert runs == [1, 2]
    assert await count_rows(database_url, "ro_charges") == 2


def test_retry_refuses_a_plain_function_when_it_decorates(sqlite_url: str) -> None:
    """@db.retry() on a `def` endpoint fails at decoration, naming it, not at each request;
    an async endpoint under a plain wrapper (a logging decorator's) is taken."""
    db = Database(sqlite_url)

    def endpoint() -> None:
        return None

    async def handler() -> None:
        return None

    @functools.wraps(handler)
    def logged() -> Awaitable[None]:
        return handler()

    plain = r"endpoint is a plain function\. Make it `async def`"
    with pytest.raises(ConfigurationError, match=plain):
        db.retry()(endpoint)  # type: ignore[arg-type]
    assert callable(db.retry()(logged))


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_conflict_after_a_dependency_wrote_is_not_retried(
    db: Database, tables: Tables, database_url: str
) -> None:
    """A dependency that wrote through the request's session before the retried endpoint
    began: a retry would run the endpoint alone, its rollback losing the dependency's row
    (which the response acknowledged), so the request answers 409 and keeps nothing."""
    await tables.create("ro_audit", "what VARCHAR(20) NOT NULL")
    runs: list[int] = []
    app = FastAPI()

    async def audited(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
        await session.execute(text("INSERT INTO ro_audit (what) VALUES ('audit')"))

    @app.post("/charge", dependencies=[Depends(audited)])
    @db.retry()
    async def charge(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
        runs.append(1)
        if len(runs) == 1:
            await session.execute(text(CONFLICT))
        await session.execute(text("INSERT INTO ro_audit (what) VALUES ('charge')"))

    answer = await send(app, "POST /charge")
    assert answer.status_code == 409, answer.text
    assert "had run statements before it began" in answer.json()["detail"]["message"]
    assert runs == [1]
    assert await count_rows(database_url, "ro_audit") == 0


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_retried_function_inside_another_leaves_its_conflicts_to_the_outer(
    db: Database, tables: Tables, database_url: str
) -> None:
    """A retried service called by a retried endpoint after the endpoint wrote: the service's
    conflict runs the endpoint again whole (its rollback took the endpoint's row), so each row
    is kept once, where the service retrying alone lost the endpoint's."""
    await tables.create("ro_rows", "what VARCHAR(20) NOT NULL")
    runs: list[str] = []
    app = FastAPI()

    @db.retry()
    async def service(session: AsyncSession) -> None:
        runs.append("service")
        if runs.count("service") == 1:
            await session.execute(text(CONFLICT))
        await session.execute(text("INSERT INTO ro_rows (what) VALUES ('service')"))

    @app.post("/work")
    @db.retry()
    async def endpoint(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
        runs.append("endpoint")
        await session.execute(text("INSERT INTO ro_rows (what) VALUES ('endpoint')"))
        await service(session)

    answer = await send(app, "POST /work")
    assert answer.status_code == 200, answer.text
    assert runs == ["endpoint", "service", "endpoint", "service"]
    rows = await stored(db, "SELECT what FROM ro_rows ORDER BY what")
    assert rows == ["endpoint", "service"]


def test_retry_refuses_an_async_generator(sqlite_url: str) -> None:
    """Its work would run after the decorator returned it, outside every attempt."""
    db = Database(sqlite_url)

    async def rows() -> AsyncIterator[int]:
        yield 1

    with pytest.raises(ConfigurationError, match=r"rows is an async generator"):
        db.retry()(rows)  # type: ignore[arg-type]


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_conflict_after_a_released_savepoint_is_retried(
    db: Database, tables: Tables, database_url: str
) -> None:
    """A released savepoint is no commit: the unit runs again (it was refused as "after it
    had committed part of its work"), and its callback runs once."""
    await tables.create("ro_charges", "amount INTEGER NOT NULL")
    runs: list[int] = []
    ran: list[int] = []
    async for attempt in db.retrying(attempts=2, backoff=0):
        async with attempt as session:
            runs.append(attempt.number)
            db.on_commit(functools.partial(ran.append, attempt.number))
            async with session.begin_nested():
                await session.execute(text("INSERT INTO ro_charges (amount) VALUES (10)"))
            if attempt.number == 1:
                await session.execute(text(CONFLICT))
    assert (runs, ran) == ([1, 2], [2])
    assert await count_rows(database_url, "ro_charges") == 1


async def test_a_retried_function_that_is_not_the_endpoint_commits_nothing(
    db: Database, tables: Tables, database_url: str
) -> None:
    """@db.retry() on a service function called by an endpoint that is not retried, or in
    db.transaction(), is refused: its commit kept the caller's work, and the caller's failure
    after it (a 422, an exception) rolled back nothing."""
    await tables.create_all(Base.metadata)

    @db.retry()
    async def add_line(session: AsyncSession, email: str) -> None:
        session.add(Email(email=email))

    async def endpoint(session: AsyncSession) -> None:
        session.add(Email(email="first@x"))
        await add_line(session, "second@x")
        raise ValueError("the endpoint fails after the service function")

    answer = await send(app_with(db.session, {"POST /emails": endpoint}), "POST /emails")
    with pytest.raises(ConfigurationError, match="not the endpoint"):  # noqa: PT012
        async with db.transaction() as session:
            session.add(Email(email="third@x"))
            await add_line(session, "fourth@x")
    assert answer.status_code == 500
    assert await count_rows(database_url, "ro_emails") == 0


async def test_retried_endpoints_of_every_shape_fastapi_takes_are_run(
    db: Database, tables: Tables, database_url: str
) -> None:
    """A retried bound method, functools.partial or callable object is its route's endpoint:
    each answers 200, its row stored (the check of the endpoint refused all three)."""
    await tables.create_all(Base.metadata)

    class Views:
        """Endpoints of an object, as class-based views give them."""

        @db.retry()
        async def add(self, email: str) -> None:
            db.current_session().add(Email(email=email))

        @db.retry()
        async def __call__(self, email: str) -> None:
            await self.add(email)

    views = Views()

    @db.retry()
    async def add_for(email: str, domain: str) -> None:
        db.current_session().add(Email(email=f"{email}@{domain}"))

    app = FastAPI(dependencies=[Depends(db.session)])
    app.add_api_route("/method", views.add, methods=["POST"])
    app.add_api_route("/partial", functools.partial(add_for, domain="x"), methods=["POST"])
    app.add_api_route("/object", views, methods=["POST"])
    answers = [
        (await send(app, f"POST /{shape}", params={"email": shape})).status_code
        for shape in ("method", "partial", "object")
    ]
    assert answers == [200, 200, 200]
    assert await count_rows(database_url, "ro_emails") == 3


async def test_a_retried_endpoint_registered_without_its_decorator_says_so(
    db: Database, tables: Tables
) -> None:
    """@db.retry() above the route decorator: the route serves the function as it was, never
    retried, silently (500s under contention). Each request now fails naming the order."""
    await tables.create_all(Base.metadata)
    app = FastAPI()

    @db.retry()
    @app.post("/emails")
    async def add(session: Annotated[AsyncSession, Depends(db.session)]) -> None:
        session.add(Email(email="a@x"))

    with pytest.raises(ConfigurationError, match=r"below @app\.post"):
        await send(app, "POST /emails", raise_app_exceptions=True)
