"""on_commit callbacks run after the commit, in order, and never for work that rolled back.

Each test registers callbacks that append to a list, then checks the list against what was
committed (read back in a unit of work of its own). In a request, a pure ASGI middleware
records when the response starts, so the order "callback, then response" is observed, not
inferred.
"""

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable
from typing import Annotated

import pytest
from fastapi import Depends, FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database, NoSessionError
from dbscope.testing import OnCommitError, failed_callbacks
from tests.helpers import ResponseStart, Tables, app_with, client_for, stored

INSERT = text("INSERT INTO oc_rows (label) VALUES (:label)")


class Boom(Exception):
    """The error that makes a unit, a savepoint or a callback fail."""


@pytest.fixture(autouse=True)
async def oc_rows(tables: Tables) -> None:
    """An empty ``oc_rows`` table for every test; ``db`` (tests/conftest.py) connects to it."""
    await tables.create("oc_rows", "label VARCHAR(40) NOT NULL")


@pytest.fixture
def calls() -> list[str]:
    """What the test's callbacks appended, in the order they ran."""
    return []


async def stored_labels(db: Database) -> list[str]:
    """The labels committed so far, read in a unit of work of their own."""
    return await stored(db, "SELECT label FROM oc_rows ORDER BY label")


def appender(calls: list[str], label: str) -> Callable[[], None]:
    """A plain callback that appends ``label`` to ``calls``."""
    return lambda: calls.append(label)


def async_appender(calls: list[str], label: str) -> Callable[[], object]:
    """A coroutine-function callback that appends ``label`` to ``calls``."""

    async def callback() -> None:
        calls.append(label)

    return callback


async def test_callbacks_run_after_the_commit_in_registration_order(
    db: Database, calls: list[str]
) -> None:
    """Plain and async callbacks run once the block has committed, in the order registered."""
    async with db.transaction() as session:
        await session.execute(INSERT, {"label": "row"})
        db.on_commit(appender(calls, "first"))
        db.on_commit(async_appender(calls, "second"))
        db.on_commit(appender(calls, "third"))
        await session.flush()
        assert calls == []
    assert calls == ["first", "second", "third"]


async def test_a_callback_sees_the_committed_row(db: Database) -> None:
    """A callback reading in a unit of its own finds the row: it ran after the COMMIT."""
    seen: list[list[str]] = []

    async def read_back() -> None:
        seen.append(await stored_labels(db))

    async with db.transaction() as session:
        await session.execute(INSERT, {"label": "row"})
        db.on_commit(read_back)
    assert seen == [["row"]]


async def test_callbacks_never_run_when_the_unit_rolls_back(db: Database, calls: list[str]) -> None:
    """A block that raises rolls back, and its callbacks are dropped."""

    async def write_then_fail() -> None:
        async with db.transaction() as session:
            await session.execute(INSERT, {"label": "row"})
            db.on_commit(appender(calls, "dropped"))
            raise Boom

    with pytest.raises(Boom):
        await write_then_fail()
    assert calls == []
    assert await stored_labels(db) == []


async def insert_noting(db: Database, session: AsyncSession, label: str, calls: list[str]) -> None:
    """Insert the row ``label``, and register a callback that appends ``label`` to ``calls``."""
    await session.execute(INSERT, {"label": label})
    db.on_commit(appender(calls, label))


async def test_callbacks_registered_before_an_explicit_rollback_are_dropped(
    db: Database, calls: list[str]
) -> None:
    """After ``session.rollback()`` only the callbacks registered later run."""
    async with db.transaction() as session:
        await insert_noting(db, session, "rolled-back", calls)
        await session.rollback()
        await insert_noting(db, session, "kept", calls)
    assert (calls, await stored_labels(db)) == (["kept"], ["kept"])


async def test_a_callback_registered_in_a_rolled_back_savepoint_is_dropped(
    db: Database, calls: list[str]
) -> None:
    """Rolling back a savepoint drops its callbacks and keeps those of the outer transaction."""
    async with db.transaction() as session:
        await insert_noting(db, session, "outer", calls)
        with contextlib.suppress(Boom):
            async with session.begin_nested():
                await insert_noting(db, session, "savepoint", calls)
                raise Boom
        db.on_commit(appender(calls, "outer-after"))
    assert (calls, await stored_labels(db)) == (["outer", "outer-after"], ["outer"])


async def test_a_callback_registered_in_a_released_savepoint_runs_after_the_outer_commit(
    db: Database, calls: list[str]
) -> None:
    """A released savepoint's callback waits for the outer COMMIT, then runs."""
    async with db.transaction() as session:
        async with session.begin_nested():
            await insert_noting(db, session, "savepoint", calls)
        assert calls == []
    assert (calls, await stored_labels(db)) == (["savepoint"], ["savepoint"])


async def test_a_released_savepoints_callbacks_are_dropped_when_the_unit_rolls_back(
    db: Database, calls: list[str]
) -> None:
    """Releasing a savepoint commits nothing: the unit's rollback drops every callback, the
    savepoint's and those before it (SQLAlchemy's after_commit for the release ran them)."""

    async def fail_after_a_savepoint() -> None:
        async with db.transaction() as session:
            await insert_noting(db, session, "before", calls)
            async with session.begin_nested():
                await insert_noting(db, session, "savepoint", calls)
            raise Boom

    with pytest.raises(Boom):
        await fail_after_a_savepoint()
    assert (calls, await stored_labels(db)) == ([], [])


async def test_a_failing_callback_is_logged_and_the_next_ones_still_run(
    db: Database, caplog: pytest.LogCaptureFixture, calls: list[str]
) -> None:
    """A callback that raises is logged with its traceback; the data and later callbacks stay."""

    def fail() -> None:
        raise Boom("the callback failed")

    async with db.transaction() as session:
        await session.execute(INSERT, {"label": "row"})
        db.on_commit(fail)
        db.on_commit(appender(calls, "after-the-failure"))
    errors = [r for r in caplog.records if r.name == "dbscope" and r.levelno == logging.ERROR]
    assert calls == ["after-the-failure"]
    assert await stored_labels(db) == ["row"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], Boom)


async def test_failed_callbacks_hears_of_each_one_that_raises_in_any_loop(
    db: Database, database_url: str, calls: list[str]
) -> None:
    """``dbscope.testing.failed_callbacks()`` collects the callbacks that raise in the block,
    a unit's in a thread with a loop of its own too; ``check()`` names each once, with its
    traceback from its own frame; one that raises after the block is only logged."""

    def fail() -> None:
        raise Boom("the callback failed")

    async def in_a_loop_of_its_own() -> None:
        async with Database(database_url) as other, other.transaction() as session:
            await session.execute(INSERT, {"label": "other"})
            other.on_commit(fail)

    with failed_callbacks() as failed:
        async with db.transaction() as session:
            await session.execute(INSERT, {"label": "row"})
            db.on_commit(fail)
            db.on_commit(appender(calls, "after-the-failure"))
        await asyncio.to_thread(asyncio.run, in_a_loop_of_its_own())
    with pytest.raises(OnCommitError) as raised:
        failed.check()
    failed.check()  # nothing new since
    async with db.transaction() as session:
        db.on_commit(fail)

    name = f"<locals>.fail (tests/test_on_commit.py:{fail.__code__.co_firstlineno})"
    assert str(raised.value).startswith("2 on_commit callbacks raised: tests.test_on_commit.")
    assert str(raised.value).count(f"{name} raised {Boom.__module__}.Boom: the callback") == 2
    assert "_commit_hooks.py" not in str(raised.value)
    assert [type(item.error) for item in failed] == [Boom, Boom]
    assert calls == ["after-the-failure"]
    assert await stored_labels(db) == ["other", "row"]


async def test_a_callback_of_a_mid_unit_commit_runs_even_if_the_unit_later_fails(
    db: Database, calls: list[str]
) -> None:
    """Work committed by ``session.commit()`` gets its callback, whatever happens after it."""

    async def commit_then_fail() -> None:
        async with db.transaction() as session:
            await session.execute(INSERT, {"label": "committed"})
            db.on_commit(appender(calls, "committed"))
            await session.commit()
            await session.execute(INSERT, {"label": "rolled-back"})
            db.on_commit(appender(calls, "rolled-back"))
            raise Boom

    with pytest.raises(Boom):
        await commit_then_fail()
    assert await stored_labels(db) == ["committed"]
    assert calls == ["committed"]


async def test_unit_of_work_on_commit_runs_after_its_commit(db: Database, calls: list[str]) -> None:
    """``UnitOfWork.on_commit`` registers on that unit, like ``db.on_commit`` inside it."""
    async with db.unit_of_work() as unit:
        await unit.session.execute(INSERT, {"label": "row"})
        unit.on_commit(appender(calls, "unit"))
        assert calls == []
    assert calls == ["unit"]


async def test_on_commit_outside_a_unit_of_work_raises_no_session_error(db: Database) -> None:
    """With no unit of work active, registering a callback is refused."""
    with pytest.raises(NoSessionError):
        db.on_commit(lambda: None)


async def test_a_callback_that_is_no_function_is_refused_when_registered(
    db: Database, calls: list[str]
) -> None:
    """``on_commit(notify())`` (a coroutine) or ``on_commit(None)`` raises TypeError at once,
    saying what to pass; the coroutine is closed, never left to warn, and the unit commits."""

    async def notify() -> None:
        calls.append("notify")

    coroutine = notify()
    async with db.transaction() as session:
        await session.execute(INSERT, {"label": "row"})
        with pytest.raises(TypeError, match="a coroutine: pass the function, without calling"):
            db.on_commit(coroutine)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="takes a function to call after the commit"):
            db.on_commit(None)  # type: ignore[arg-type]
        # One that needs an argument was taken, and only logged after the commit.
        with pytest.raises(TypeError, match="calls its callback with no arguments"):
            db.on_commit(calls.append)  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED
    assert calls == []
    assert await stored_labels(db) == ["row"]


def build_app(db: Database) -> FastAPI:
    """Endpoints that write a row and register callbacks appending to ``app.state.events``."""
    events: list[str] = []

    def fail() -> None:
        raise Boom("the callback failed")

    async def ok(session: AsyncSession) -> dict[str, str]:
        await session.execute(INSERT, {"label": "ok"})
        db.on_commit(async_appender(events, "callback"))
        return {"status": "ok"}

    async def failing_callback(session: AsyncSession) -> dict[str, str]:
        await session.execute(INSERT, {"label": "failing-callback"})
        db.on_commit(fail)
        db.on_commit(appender(events, "callback"))
        return {"status": "ok"}

    async def conflict(session: AsyncSession) -> None:
        await session.execute(INSERT, {"label": "conflict"})
        db.on_commit(appender(events, "callback"))
        raise HTTPException(409, "conflict")

    app = app_with(
        db.session,
        {"POST /ok": ok, "POST /failing-callback": failing_callback, "POST /conflict": conflict},
    )
    app.state.events = events
    app.add_middleware(ResponseStart, on_start=lambda: events.append("response-start"))
    return app


async def test_in_a_request_callbacks_run_before_the_response_starts(db: Database) -> None:
    """The callback has run when the response begins to go out."""
    app = build_app(db)
    async with client_for(app) as client:
        response = await client.post("/ok")
    assert response.status_code == 200
    assert app.state.events == ["callback", "response-start"]
    assert await stored_labels(db) == ["ok"]


async def test_a_failing_callback_in_a_request_still_answers_2xx_with_the_row_committed(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A callback that raises is logged; the client gets its 200 and the row is stored."""
    app = build_app(db)
    async with client_for(app) as client:
        response = await client.post("/failing-callback")
    errors = [r for r in caplog.records if r.name == "dbscope" and r.levelno == logging.ERROR]
    assert response.status_code == 200, response.text
    assert app.state.events == ["callback", "response-start"]
    assert await stored_labels(db) == ["failing-callback"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], Boom)


async def test_callbacks_of_a_request_that_fails_never_run(db: Database) -> None:
    """An endpoint that raises HTTPException(409) rolls back and drops its callback."""
    app = build_app(db)
    async with client_for(app) as client:
        response = await client.post("/conflict")
    assert response.status_code == 409
    assert app.state.events == ["response-start"]
    assert await stored_labels(db) == []


async def test_on_commit_in_a_read_only_unit_is_refused_when_registered(
    db: Database, calls: list[str]
) -> None:
    """A read-only unit never commits: its callback would be dropped in silence, so
    registering one is refused at once, naming the fix (Django runs it after any commit)."""
    async with db.transaction(read_only=True) as session:
        await session.execute(text("SELECT 1"))
        with pytest.raises(ConfigurationError, match="read-only unit of work: it never commits"):
            db.on_commit(appender(calls, "read-only"))
    assert calls == []


async def test_on_commit_in_a_request_with_a_read_session_after_its_session_waits_for_the_write(
    db: Database, calls: list[str]
) -> None:
    """A request that depends on db.session, then on db.read_session (a dependency that
    loads the signed-in user): the read-only unit runs last, but the callback belongs to the
    writable one and runs after its commit (it was refused, a 500; before that, dropped)."""
    app = FastAPI()

    async def signed_in(session: Annotated[AsyncSession, Depends(db.read_session)]) -> int:
        return int((await session.execute(text("SELECT 1"))).scalar_one())

    @app.post("/rows")
    async def add(
        session: Annotated[AsyncSession, Depends(db.session)],
        user: Annotated[int, Depends(signed_in)],
    ) -> None:
        await session.execute(INSERT, {"label": "written"})
        db.on_commit(appender(calls, "after the write"))

    async with client_for(app) as client:
        response = await client.post("/rows")
    assert response.status_code == 200, response.text
    assert calls == ["after the write"]
    assert await stored_labels(db) == ["written"]
