"""Test helpers for any test runner: one rolled-back transaction per test, HTTP included.

The pytest plugin (``dbscope._pytest_plugin``, docs/testing.md) is a thin layer of fixtures
over these functions; they also serve unittest or a script::

    from dbscope.testing import any_loop_engine, client, create_tables, rolled_back

    create_tables(TEST_URL, metadata=Base.metadata)        # once, before the tests
    with any_loop_engine(TEST_URL) as engine:
        ...
        # in each test, inside its event loop:
        async with rolled_back(db, engine):                # db = the app's Database
            async with client(app) as http:                # the app's lifespan runs
                await http.post("/notes", json={...})      # commits become savepoints
        # everything the test and the app wrote is gone here

Event loops: an engine's pooled connections belong to the loop that opened them.
:func:`any_loop_engine` keeps no connection between uses, so tests that each get a new loop
can share it (each test then opens one connection). When the loop outlives a test, a pooled
engine built in that loop (``async with Database(TEST_URL) as test_db: test_db.engine``)
saves the connection set-up: a test then costs a BEGIN and a ROLLBACK.

This module imports neither pytest nor httpx (:func:`client` imports httpx when called).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import MetaData
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.pool import NullPool

from dbscope import ConfigurationError, Database

if TYPE_CHECKING:
    import httpx

__all__ = [
    "any_loop_engine",
    "client",
    "create_tables",
    "drop_tables",
    "lifespan",
    "open_session",
    "rolled_back",
]

T = TypeVar("T")

# The ASGI callable, in the words of the ASGI specification (FastAPI and Starlette apps fit).
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# -- one transaction per test ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def rolled_back(
    db: Database, engine: AsyncEngine, *, raise_on_lazy_load: bool | None = None
) -> AsyncIterator[AsyncConnection]:
    """Run every unit of work of ``db`` in one transaction that is rolled back at the end.

    Opens a connection on ``engine``, begins a transaction and binds ``db`` to it
    (:meth:`Database.bind_to`): requests and ``db.transaction()`` blocks then use sessions on
    this connection whose commits and rollbacks are savepoints, and the app's lifespan
    neither connects nor disposes ``db``. At the end the transaction is rolled back, so
    nothing the block wrote remains, and the connection is closed. Enter it inside the
    event loop the test runs in; the units of work share the connection, so run them one at
    a time.

    Args:
        db: the application's Database; its own URL is not used meanwhile.
        engine: an engine on the test database, usable in the running loop.
        raise_on_lazy_load: refuse every lazy load meanwhile (default: ``db``'s setting).

    Yields:
        The connection, with its transaction begun.
    """
    async with engine.connect() as connection:
        transaction = await connection.begin()
        try:
            with db.bind_to(connection, raise_on_lazy_load=raise_on_lazy_load):
                yield connection
        finally:
            if transaction.is_active:
                await transaction.rollback()


@contextlib.asynccontextmanager
async def open_session(db: Database) -> AsyncIterator[AsyncSession]:
    """A session of ``db`` for the test's own queries, in the test's transaction.

    It is a unit of work of ``db`` (the app's session settings, its lazy-load check, its
    schema, and ``db.current_session()`` returns it inside the block), except that it never
    commits at the end: whatever it still holds is rolled back. Its own ``commit()`` and
    ``rollback()`` are savepoints while ``db`` is bound (:func:`rolled_back`).
    """
    async with db.unit_of_work() as unit:
        try:
            yield unit.session
        finally:
            unit.rollback_only = True


@contextlib.contextmanager
def any_loop_engine(url: str | URL) -> Iterator[AsyncEngine]:
    """An engine on ``url`` that every event loop may use, verified on entry.

    It pools no connection (``NullPool``): each ``engine.connect()`` opens a new connection
    in the running loop and closes it at the end, which is what lets tests that each run in
    a new loop share one engine. It has dbscope's per-database set-up (SQLite foreign keys and
    savepoint-safe ``BEGIN``). Built, checked (the server answers) and disposed in a worker
    thread, so it can be entered with or without a running loop.

    Raises:
        ConfigurationError: the URL is invalid, or names an in-memory SQLite database, which
            cannot be shared between connections.
        DatabaseUnavailableError: the server cannot be reached.
    """
    database = Database(url, poolclass=NullPool, pool_pre_ping=False)
    if database.settings.is_memory:
        message = (
            f"The test database {database.url!r} is an in-memory SQLite database, which "
            "exists only inside one connection; tests open one connection each. Use a file "
            "instead, e.g. 'sqlite+aiosqlite:///test.db'."
        )
        raise ConfigurationError(message)
    _in_new_loop(database.connect)
    try:
        yield database.engine
    finally:
        _in_new_loop(database.dispose)


# -- the app's lifespan and an HTTP client -----------------------------------------------------


@contextlib.asynccontextmanager
async def lifespan(app: ASGIApp) -> AsyncIterator[ASGIApp]:
    """Start ``app`` as a server would, and shut it down at the end: the ASGI lifespan.

    The lifespan runs in a task of its own, as under uvicorn, so it may enter and exit task
    groups freely. An exception raised at start-up or shutdown propagates unchanged.

    Yields:
        The app to send requests to: it hands the lifespan's state (what a lifespan yields)
        to each request as ``request.state``, as servers do.
    """
    state: dict[str, Any] = {}
    to_app: asyncio.Queue[Message] = asyncio.Queue()
    from_app: asyncio.Queue[Message] = asyncio.Queue()
    scope: Scope = {
        "type": "lifespan",
        "asgi": {"version": "3.0", "spec_version": "2.0"},
        "state": state,
    }

    async def run_lifespan() -> None:
        await app(scope, to_app.get, from_app.put)

    task = asyncio.create_task(run_lifespan())
    try:
        await to_app.put({"type": "lifespan.startup"})
        started = await _lifespan_reply(task, from_app, "startup")
    except BaseException:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        raise

    async def app_with_state(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": state.copy()}
        await app(scope, receive, send)

    try:
        yield app_with_state
    finally:
        if started:
            await to_app.put({"type": "lifespan.shutdown"})
            await _lifespan_reply(task, from_app, "shutdown")
        await task


async def _lifespan_reply(
    task: asyncio.Task[None], replies: asyncio.Queue[Message], step: str
) -> bool:
    """Wait for the app's answer to ``lifespan.<step>``; False if it has no lifespan."""
    reply = asyncio.ensure_future(replies.get())
    await asyncio.wait({reply, task}, return_when=asyncio.FIRST_COMPLETED)
    if not reply.done():
        reply.cancel()
        task.result()  # raises the app's own exception, if it failed
        return False  # the app returned without answering: it has no lifespan
    message = reply.result()
    if message["type"] == f"lifespan.{step}.failed":
        if task.done():
            task.result()  # Starlette re-raises the error after reporting it: raise that one
        else:
            task.cancel()
        detail = message.get("message") or "no reason given"
        raise RuntimeError(f"The app's lifespan {step} failed: {detail}")
    return True


@contextlib.asynccontextmanager
async def client(
    app: ASGIApp, *, base_url: str = "http://testserver"
) -> AsyncIterator[httpx.AsyncClient]:
    """An ``httpx.AsyncClient`` that sends requests to ``app`` in-process, inside its lifespan.

    An exception the app does not handle is raised in the test (the client does not turn it
    into a 500). Needs httpx: ``pip install 'dbscope[testing]'``.
    """
    try:
        import httpx
    except ModuleNotFoundError as error:  # pragma: no cover - exercised only without httpx
        message = "dbscope.testing.client needs httpx: pip install 'dbscope[testing]'"
        raise ModuleNotFoundError(message, name=error.name) from error
    async with lifespan(app) as running:
        transport = httpx.ASGITransport(app=running)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as http:
            yield http


# -- tables, once per test run -----------------------------------------------------------------


def create_tables(
    url: str | URL,
    *,
    metadata: MetaData | None = None,
    alembic_config: str | Path | None = None,
) -> None:
    """Create the tables in the test database: from ``metadata``, or by Alembic migrations.

    With ``alembic_config`` (the path of an ``alembic.ini``) the migrations are upgraded to
    ``head``, with ``sqlalchemy.url`` set to ``url``; ``env.py`` must read it from there, as
    Alembic's async template does. Otherwise ``metadata.create_all()`` creates the tables
    that do not exist yet. Runs in a worker thread with an event loop of its own, so it can
    be called from anywhere, once, before the tests.

    Raises:
        ConfigurationError: neither ``metadata`` nor ``alembic_config`` is given.
    """
    if alembic_config is not None:
        _in_thread(lambda: _alembic(url, alembic_config, "upgrade", "head"))
    elif metadata is not None:
        _in_new_loop(lambda: _run_ddl(url, metadata.create_all))
    else:
        raise ConfigurationError(_NOTHING_TO_CREATE)


def drop_tables(
    url: str | URL,
    *,
    metadata: MetaData | None = None,
    alembic_config: str | Path | None = None,
) -> None:
    """Remove what :func:`create_tables` made: downgrade to ``base``, or ``drop_all()``.

    Alembic keeps its (then empty) version table.

    Raises:
        ConfigurationError: neither ``metadata`` nor ``alembic_config`` is given.
    """
    if alembic_config is not None:
        _in_thread(lambda: _alembic(url, alembic_config, "downgrade", "base"))
    elif metadata is not None:
        _in_new_loop(lambda: _run_ddl(url, metadata.drop_all))
    else:
        raise ConfigurationError(_NOTHING_TO_CREATE)


_NOTHING_TO_CREATE = (
    "Pass the tables to make: metadata=Base.metadata (your declarative base's), or "
    "alembic_config='alembic.ini' to run your migrations."
)


async def _run_ddl(url: str | URL, ddl: Callable[..., None]) -> None:
    async with Database(url, poolclass=NullPool) as database, database.transaction() as session:
        connection = await session.connection()
        await connection.run_sync(ddl)


def _alembic(url: str | URL, path: str | Path, command_name: str, revision: str) -> None:
    try:
        from alembic import command
        from alembic.config import Config
    except ModuleNotFoundError as error:
        message = f"Running the migrations of {str(path)!r} needs Alembic: pip install alembic"
        raise ModuleNotFoundError(message, name=error.name) from error
    if not Path(path).is_file():
        message = f"The Alembic configuration {str(path)!r} does not exist."
        raise ConfigurationError(message)
    config = Config(str(path))
    # The resolved URL (with its async driver), escaped for configparser's interpolation.
    rendered = Database(url).url.render_as_string(hide_password=False)
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))
    getattr(command, command_name)(config, revision)


def _in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a new thread, where no event loop runs, and return its result."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dbscope-testing") as pool:
        return pool.submit(work).result()


def _in_new_loop(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``work()`` in a new thread with an event loop of its own."""
    return _in_thread(lambda: asyncio.run(work()))
