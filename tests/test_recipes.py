"""The recipes of docs/recipes.md run as written: task queue workers (arq on Redis, taskiq),
a WebSocket handler, several databases, the app's own exception handlers, Alembic in tests."""

from __future__ import annotations

import gc
import uuid
from pathlib import Path
from typing import Any

import pytest
from arq.connections import create_pool
from arq.worker import Worker
from examples.notes.models import Base as ExampleBase
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

import dbscope.alembic
from dbscope import Database, LifecycleError
from dbscope.testing import own_database
from tests import helpers
from tests.documented import ROOT, block_containing, python_blocks, run_block
from tests.websocket_client import WebSocketClient

PAGE = "docs/recipes.md"
EXAMPLE_ALEMBIC = Path(ROOT / "examples" / "notes" / "alembic.ini")


def recipe(database_url: str, needle: str) -> dict[str, Any]:
    """The page's shared model and Database, then the recipe whose block has ``needle``."""
    namespace = run_block(python_blocks(PAGE)[0], database_url)
    return run_block(block_containing(PAGE, needle), database_url, namespace=namespace)


async def worker_recipe(database_url: str, tables: helpers.Tables, needle: str) -> dict[str, Any]:
    """A task queue recipe, with its tables made and two notes in them."""
    namespace = recipe(database_url, needle)
    await tables.create_all(namespace["Base"].metadata)
    await add_notes(namespace["db"], "first", "second")
    return namespace


async def add_notes(db: Database, *texts: str) -> None:
    """Store a note for each text, with ids from 1, through a unit of work of ``db``'s."""
    async with db, db.transaction() as session:
        await session.execute(
            text("INSERT INTO notes (text, archived) VALUES (:text, :archived)"),
            [{"text": t, "archived": False} for t in texts],
        )


async def archived(db: Database) -> dict[int, bool]:
    """Each note's id and whether it is archived."""
    async with db, db.transaction() as session:
        rows = await session.execute(text("SELECT id, archived FROM notes ORDER BY id"))
        return {note_id: bool(flag) for note_id, flag in rows}


# arq 0.28's Worker.close() calls redis-py's close(), which redis-py 5 deprecates.
@pytest.mark.filterwarnings("ignore:Call to deprecated close:DeprecationWarning:arq")
@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
async def test_an_arq_worker_runs_each_job_in_a_transaction_of_its_own(
    database_url: str, tables: helpers.Tables
) -> None:
    """The arq worker connects at start-up, archives the note each job names, disposes."""
    namespace = await worker_recipe(database_url, tables, "class WorkerSettings")
    db, settings = namespace["db"], namespace["WorkerSettings"]
    queue = f"dbscope-test:{uuid.uuid4()}"  # apart from any other run's jobs on this Redis
    redis = await create_pool(settings.redis_settings, default_queue_name=queue)
    try:
        await redis.enqueue_job("archive_note", 2)
        worker = Worker(
            functions=settings.functions,
            on_startup=settings.on_startup,
            on_shutdown=settings.on_shutdown,
            redis_settings=settings.redis_settings,
            queue_name=queue,
            burst=True,
            handle_signals=False,
        )
        await worker.main()
        await worker.close()
    finally:
        await redis.delete(queue)
        await redis.aclose()
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert await archived(db) == {1: False, 2: True}


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
async def test_a_taskiq_task_runs_in_a_transaction_of_its_own(
    database_url: str, tables: helpers.Tables
) -> None:
    """Between the broker's start-up and shut-down, a task archives the note it names."""
    namespace = await worker_recipe(database_url, tables, "InMemoryBroker()")
    db, broker = namespace["db"], namespace["broker"]
    await broker.startup()
    try:
        task = await namespace["archive_note"].kiq(1)
        result = await task.wait_result(timeout=10)
        idle_after_the_task = db.stats().checked_in
    finally:
        await broker.shutdown()
    with pytest.raises(LifecycleError):
        db.stats()  # disposed of at shut-down
    assert not result.is_err
    assert idle_after_the_task == 1
    assert await archived(db) == {1: True, 2: False}


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
async def test_a_websocket_answers_each_message_once_its_unit_has_committed(
    database_url: str, tables: helpers.Tables
) -> None:
    """Each message is a unit of work: its note is stored when the answer arrives."""
    namespace = recipe(database_url, "@app.websocket")
    db, app = namespace["db"], namespace["app"]
    await tables.create_all(namespace["Base"].metadata)
    answers, stored = [], []
    async with db.lifespan(app):
        websocket = WebSocketClient(app, "/notes/live")
        await websocket.connect()
        for message in ("first", "second"):
            answers.append(await websocket.send_text(message))
            stored.append(await stored_texts(db))
        await websocket.close()
        held = db.stats().checked_out
    assert answers == [{"id": 1, "text": "first"}, {"id": 2, "text": "second"}]
    assert stored == [["first"], ["first", "second"]]
    assert held == 0


async def stored_texts(db: Database) -> list[str]:
    """The notes' texts, read through a unit of work of the app's Database."""
    async with db.transaction() as session:
        return list((await session.scalars(text("SELECT text FROM notes ORDER BY id"))).all())


@pytest.mark.parametrize("db_backend", ["asyncpg", "asyncmy"])
async def test_two_databases_each_commit_their_part_of_a_request(
    database_url: str, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The invoice endpoint reads a note from one database and writes to the other."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("BILLING_DATABASE_URL", sqlite_url)
    namespace = run_block(block_containing(PAGE, "BILLING_"), database_url)
    async with helpers.admin(database_url) as connection:
        await connection.execute(text("DROP TABLE IF EXISTS notes"))
        await connection.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)"))
        await connection.execute(text("INSERT INTO notes VALUES (1, 'hello')"))
    async with helpers.admin(sqlite_url) as connection:
        await connection.execute(text("CREATE TABLE invoices (note_text TEXT)"))
    try:
        app = namespace["app"]
        async with namespace["lifespan"](app), helpers.client_for(app) as client:
            response = await client.post("/notes/1/invoice")
        async with helpers.admin(sqlite_url) as connection:
            invoiced = (await connection.execute(text("SELECT note_text FROM invoices"))).all()
    finally:
        async with helpers.admin(database_url) as connection:
            await connection.execute(text("DROP TABLE notes"))
    assert response.status_code == 200, response.text
    assert response.json() == {"invoiced": 1}
    assert invoiced == [("hello",)]


async def test_the_apps_own_handler_answers_and_the_unit_rolls_back(
    database_url: str, tables: helpers.Tables
) -> None:
    """NoteNotFound's handler answers 404 and the copy written before it is not kept."""
    namespace = recipe(database_url, "class NoteNotFound")
    db, app, note = namespace["db"], namespace["app"], namespace["Note"]
    await tables.create_all(namespace["Base"].metadata)
    await add_notes(db, "first")
    async with db.lifespan(app), helpers.client_for(app) as client:
        copied = await client.post("/notes/1/copies")
        missing = await client.post("/notes/7/copies")
        async with db.transaction() as session:
            texts = (await session.scalars(select(note.text).order_by(note.id))).all()
    assert (copied.status_code, copied.json()) == (200, {"id": 2})
    assert (missing.status_code, missing.json()) == (404, {"detail": "no note 7"})
    assert texts == ["first", "first"]


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "asyncmy"])
async def test_the_migrations_of_the_example_make_its_models_tables(database_url: str) -> None:
    """The recipe's test passes on the example's migrated database, and fails on a drift.

    In a database of its own (``<name>_test``): the check compares the whole database with
    the models, so another test's table in the shared one would read as a drift."""
    namespace = run_block(
        block_containing(PAGE, "compare_metadata"),
        database_url,
        replace={"from myapp.models import Base\n": ""},
        namespace={"Base": ExampleBase},
    )
    check = namespace["test_the_migrations_make_the_models_tables"]
    with own_database(database_url) as url:
        async with Database(url) as db:
            await dbscope.alembic.upgrade(db, config=EXAMPLE_ALEMBIC)
            async with db.transaction() as session:
                await check(session)
            async with db.transaction() as session:
                await session.execute(text("ALTER TABLE example_notes DROP COLUMN body"))
            async with db.transaction() as session:
                with pytest.raises(AssertionError, match="body"):
                    await check(session)


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
async def test_the_garbage_collector_is_tuned_at_start_up_and_the_app_serves(
    database_url: str,
) -> None:
    """The recipe's lifespan connects the Database and raises the threshold; a request on
    ``Depends(db.session)`` is answered. The process's threshold is put back after."""
    namespace = recipe(database_url, "gc.set_threshold")
    lifespan = namespace["lifespan"]
    app = helpers.app_with(namespace["db"].session, {"GET /one": select_one}, lifespan=lifespan)

    before = gc.get_threshold()
    try:
        async with lifespan(app), helpers.client_for(app) as client:
            during = gc.get_threshold()
            answered = await client.get("/one")
    finally:
        gc.set_threshold(*before)
    assert before[0] < 10_000  # CPython's default, or the test would prove nothing
    assert during == (10_000, 10, 10)
    assert (answered.status_code, answered.json()) == (200, 1)


async def select_one(session: AsyncSession) -> int:
    """An endpoint on the request's session."""
    return int((await session.execute(text("SELECT 1"))).scalar_one())
