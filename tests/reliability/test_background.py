"""Background work after a request runs in a unit of work of its own, never the request's.

A FastAPI background task runs after the response has been sent, when the request's unit of
work has already committed and ended. It opens ``db.transaction()`` for its own writes; one
that fails rolls back only its own; one that reaches for the request's session is refused with
UnitOfWorkEndedError instead of silently opening a transaction nobody commits. The in-process
client waits for the background tasks before it returns the response, so every check below
runs after them.
"""

from dataclasses import dataclass, field

import pytest
from fastapi import BackgroundTasks, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, UnitOfWorkEndedError
from tests.helpers import Tables, app_with, client_for, stored

INSERT = text("INSERT INTO bg_rows (label) VALUES (:label)")


class BackgroundFailure(Exception):
    """The error a failing background task raises."""


@dataclass
class Tasks:
    """The background tasks of the app on ``db``, and what they met.

    Attributes:
        db: the app's Database.
        refused: the errors a task got from the request's session.
        finished: the tasks that ran to their end.
    """

    db: Database
    refused: list[Exception] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)

    async def write_in_own_transaction(self) -> None:
        """Write the row ``task`` in a unit of work of its own."""
        async with self.db.transaction() as session:
            await session.execute(INSERT, {"label": "task"})
        self.finished.append("own-transaction")

    async def write_then_fail(self) -> None:
        """Write the row ``failed-task`` in a unit of its own, then raise inside it."""
        async with self.db.transaction() as session:
            await session.execute(INSERT, {"label": "failed-task"})
            self.finished.append("wrote-then-failed")
            raise BackgroundFailure("the background task failed after its write")

    async def read_with(self, session: AsyncSession) -> None:
        """Read through the request's ``session``."""
        try:
            await session.execute(text("SELECT count(*) FROM bg_rows"))
        except UnitOfWorkEndedError as error:
            self.refused.append(error)
        self.finished.append("read-request-session")

    async def write_with(self, session: AsyncSession) -> None:
        """Write and commit through the request's ``session``."""
        try:
            await session.execute(INSERT, {"label": "late"})
            await session.commit()
        except UnitOfWorkEndedError as error:
            self.refused.append(error)
        self.finished.append("write-request-session")


def build_app(db: Database) -> FastAPI:
    """Each endpoint writes the row ``request``, then schedules one kind of background task.

    ``app.state.refused`` collects the errors a task got from the request's session, and
    ``app.state.finished`` the tasks that ran to their end.
    """
    background = Tasks(db)

    async def own_transaction(session: AsyncSession, tasks: BackgroundTasks) -> dict[str, str]:
        await session.execute(INSERT, {"label": "request"})
        tasks.add_task(background.write_in_own_transaction)
        return {"status": "accepted"}

    async def failing_task(session: AsyncSession, tasks: BackgroundTasks) -> dict[str, str]:
        await session.execute(INSERT, {"label": "request"})
        tasks.add_task(background.write_then_fail)
        return {"status": "accepted"}

    async def read_request_session(session: AsyncSession, tasks: BackgroundTasks) -> dict[str, str]:
        await session.execute(INSERT, {"label": "request"})
        tasks.add_task(background.read_with, session)
        return {"status": "accepted"}

    async def write_request_session(
        session: AsyncSession, tasks: BackgroundTasks
    ) -> dict[str, str]:
        await session.execute(INSERT, {"label": "request"})
        tasks.add_task(background.write_with, session)
        return {"status": "accepted"}

    app = app_with(
        db.session,
        {
            "POST /own-transaction": own_transaction,
            "POST /failing-task": failing_task,
            "POST /read-request-session": read_request_session,
            "POST /write-request-session": write_request_session,
        },
    )
    app.state.refused = background.refused
    app.state.finished = background.finished
    return app


@pytest.fixture(autouse=True)
async def bg_rows(tables: Tables) -> None:
    """An empty ``bg_rows`` table for every test; ``db`` (tests/conftest.py) connects to it."""
    await tables.create("bg_rows", "label VARCHAR(40) NOT NULL")


async def post(db: Database, app: FastAPI, path: str) -> tuple[int, list[str], int]:
    """POST ``path``: the status, the labels stored afterwards, the connections checked out."""
    async with client_for(app) as client:
        response = await client.post(path)
    checked_out = db.stats().checked_out
    print(f"\n{path}: status={response.status_code} checked_out={checked_out}")
    labels = await stored(db, "SELECT label FROM bg_rows ORDER BY label")
    return response.status_code, labels, checked_out


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


@pytest.mark.parametrize("path", ["/read-request-session", "/write-request-session"])
async def test_a_background_task_using_the_requests_session_gets_unit_of_work_ended(
    db: Database, path: str
) -> None:
    """The request's session refuses a read, or a write and commit, after the response:
    UnitOfWorkEndedError, and nothing of the task's is stored."""
    app = build_app(db)
    assert await post(db, app, path) == (200, ["request"], 0)
    assert app.state.finished == [path.removeprefix("/")]
    assert [type(error) for error in app.state.refused] == [UnitOfWorkEndedError]
