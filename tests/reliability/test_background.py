"""Background work after a request runs in a unit of work of its own, never the request's.

A FastAPI background task runs after the response has been sent, when the request's unit of
work has already committed and ended. It opens ``db.transaction()`` for its own writes; one
that fails rolls back only its own; one that reaches for the request's session is refused with
UnitOfWorkEndedError instead of silently opening a transaction nobody commits. The in-process
client waits for the background tasks before it returns the response, so every check below
runs after them.

No ``from __future__ import annotations``: the endpoints use a ``Session`` alias built inside
a function.
"""

from collections.abc import AsyncIterator
from typing import Annotated

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, UnitOfWorkEndedError
from tests.helpers import client_for

INSERT = text("INSERT INTO bg_rows (label) VALUES (:label)")


class BackgroundFailure(Exception):
    """The error a failing background task raises."""


def build_app(db: Database) -> FastAPI:
    """Each endpoint writes the row ``request``, then schedules one kind of background task.

    ``app.state.refused`` collects the errors a task got from the request's session, and
    ``app.state.finished`` the tasks that ran to their end.
    """
    app = FastAPI()
    app.state.refused = []
    app.state.finished = []
    Session = Annotated[AsyncSession, Depends(db.session)]

    async def write_in_own_transaction() -> None:
        async with db.transaction() as session:
            await session.execute(INSERT, {"label": "task"})
        app.state.finished.append("own-transaction")

    async def write_then_fail() -> None:
        async with db.transaction() as session:
            await session.execute(INSERT, {"label": "failed-task"})
            app.state.finished.append("wrote-then-failed")
            raise BackgroundFailure("the background task failed after its write")

    async def read_with(session: AsyncSession) -> None:
        try:
            await session.execute(text("SELECT count(*) FROM bg_rows"))
        except UnitOfWorkEndedError as error:
            app.state.refused.append(error)
        app.state.finished.append("read-request-session")

    async def write_with(session: AsyncSession) -> None:
        try:
            await session.execute(INSERT, {"label": "late"})
            await session.commit()
        except UnitOfWorkEndedError as error:
            app.state.refused.append(error)
        app.state.finished.append("write-request-session")

    @app.post("/own-transaction")
    async def own_transaction(session: Session, tasks: BackgroundTasks) -> dict[str, str]:
        await session.execute(INSERT, {"label": "request"})
        tasks.add_task(write_in_own_transaction)
        return {"status": "accepted"}

    @app.post("/failing-task")
    async def failing_task(session: Session, tasks: BackgroundTasks) -> dict[str, str]:
        await session.execute(INSERT, {"label": "request"})
        tasks.add_task(write_then_fail)
        return {"status": "accepted"}

    @app.post("/read-request-session")
    async def read_request_session(session: Session, tasks: BackgroundTasks) -> dict[str, str]:
        await session.execute(INSERT, {"label": "request"})
        tasks.add_task(read_with, session)
        return {"status": "accepted"}

    @app.post("/write-request-session")
    async def write_request_session(session: Session, tasks: BackgroundTasks) -> dict[str, str]:
        await session.execute(INSERT, {"label": "request"})
        tasks.add_task(write_with, session)
        return {"status": "accepted"}

    return app


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A connected Database over an empty ``bg_rows`` table."""
    database = Database(database_url)
    async with database:
        async with database.transaction() as session:
            await session.execute(text("DROP TABLE IF EXISTS bg_rows"))
            await session.execute(text("CREATE TABLE bg_rows (label VARCHAR(40) NOT NULL)"))
        yield database
        async with database.transaction() as session:
            await session.execute(text("DROP TABLE bg_rows"))


async def stored_labels(db: Database) -> list[str]:
    """The labels committed so far, read in a unit of work of their own."""
    async with db.transaction() as session:
        result = await session.execute(text("SELECT label FROM bg_rows ORDER BY label"))
        return list(result.scalars())


async def post(db: Database, app: FastAPI, path: str) -> tuple[int, list[str], int]:
    """POST ``path``: the status, the labels stored afterwards, the connections checked out."""
    async with client_for(app) as client:
        response = await client.post(path)
    checked_out = db.stats().checked_out
    print(f"\n{path}: status={response.status_code} checked_out={checked_out}")
    return response.status_code, await stored_labels(db), checked_out


async def test_a_background_task_commits_its_own_transaction(db: Database) -> None:
    """A task that writes in ``db.transaction()`` stores its row next to the request's."""
    app = build_app(db)
    assert await post(db, app, "/own-transaction") == (200, ["request", "task"], 0)
    assert app.state.finished == ["own-transaction"]


async def test_a_failing_background_task_keeps_the_requests_committed_row(db: Database) -> None:
    """A task that raises after its write loses its own row only; the request's stays."""
    app = build_app(db)
    assert await post(db, app, "/failing-task") == (200, ["request"], 0)
    assert app.state.finished == ["wrote-then-failed"]


async def test_a_background_task_reading_the_requests_session_gets_unit_of_work_ended(
    db: Database,
) -> None:
    """The request's session refuses a read after the response: UnitOfWorkEndedError."""
    app = build_app(db)
    assert await post(db, app, "/read-request-session") == (200, ["request"], 0)
    assert app.state.finished == ["read-request-session"]
    assert len(app.state.refused) == 1
    assert isinstance(app.state.refused[0], UnitOfWorkEndedError)


async def test_a_background_task_writing_through_the_requests_session_stores_nothing(
    db: Database,
) -> None:
    """A write and commit through the ended request's session are refused, and not stored."""
    app = build_app(db)
    assert await post(db, app, "/write-request-session") == (200, ["request"], 0)
    assert app.state.finished == ["write-request-session"]
    assert [type(error) for error in app.state.refused] == [UnitOfWorkEndedError]
