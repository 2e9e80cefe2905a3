"""One rolled-back transaction per test, engines that any loop may use, and the tables.

An engine's pooled connections belong to the loop that opened them: :func:`any_loop_engine`
keeps none, so tests that each get a new loop can share it (each opens a connection), while a
pooled engine built in a loop that outlives the tests (``Database(TEST_URL).engine``) saves
that set-up: a test then costs a BEGIN and a ROLLBACK. The synchronous helpers work in a
thread with a loop of its own, so they can be called with or without a running loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import Connection, MetaData, event, inspect
from sqlalchemy.engine import URL, Transaction
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.pool import NullPool
from sqlalchemy.schema import CreateSchema

from dbscope import ConfigurationError, Database, LifecycleError
from dbscope._dialects import OWN, PoolerMode, driver
from dbscope._migrations import load_config, run_command, set_url

T = TypeVar("T")


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
        # Begun on the server now, not at the test's first statement: at the end, a driver
        # that says no transaction is open tells of one ended by SQL (_ended_by_sql).
        await connection.exec_driver_sql("SELECT 1", execution_options=OWN)
        refuse = functools.partial(_refuse_commit, transaction.sync_transaction)
        event.listen(connection.sync_connection, "commit", refuse)
        try:
            with db.bind_to(connection, raise_on_lazy_load=raise_on_lazy_load):
                yield connection
        finally:
            ended = transaction.is_active and await _ended_by_sql(connection)
            if transaction.is_active:
                await transaction.rollback()
        if ended:
            raise LifecycleError(ENDED_BY_SQL)


# The driver says no transaction is open where SQLAlchemy's is: a COMMIT or ROLLBACK sent as
# SQL ended it, and what the test wrote stays for every later test.
ENDED_BY_SQL: Final = (
    "The test transaction was ended by a COMMIT or ROLLBACK sent as SQL (text('COMMIT'), "
    "exec_driver_sql('COMMIT'), before a CREATE INDEX CONCURRENTLY, say): what was written "
    "before a COMMIT, or after either, stays in the test database for every later test. Let "
    "the unit of work commit, or test such code against a database of its own."
)


async def _ended_by_sql(connection: AsyncConnection) -> bool:
    raw = await connection.get_raw_connection()
    known = driver(connection.dialect.driver)
    if known is None or known.status is None or raw.driver_connection is None:
        return False
    if not known.status_sees_reads:  # "idle" after reads only too: nothing to tell by
        return False
    return known.status(raw.driver_connection) == "idle"


def _refuse_commit(test_transaction: Transaction | None, connection: Connection) -> None:
    # Before the COMMIT is sent: the transaction is rolled back instead, on the driver's
    # connection (SQLAlchemy counts the transaction ended once its commit() raises, and a
    # pool that runs no reset on return would hand it on open, the test's rows in it).
    connection.connection.rollback()
    if connection.get_transaction() is test_transaction:
        message = (
            "The test committed the test transaction (commit() on dbscope_connection, or on "
            "the connection rolled_back() yields): its rows would stay for every later test. "
            "Use a savepoint, `async with connection.begin_nested():`, or a unit of work of "
            "the app's Database, whose commits are savepoints here."
        )
    else:
        # The test ended its transaction itself: what came next began a real one.
        message = (
            "A transaction on the test's connection committed after the test transaction "
            "had ended (rollback() on dbscope_connection, or on the connection "
            "rolled_back() yields): without it around them, the commits of the app's units "
            "are real, and their rows would stay for every later test. To undo the test's "
            "writes midway, roll back a savepoint instead: `async with "
            "connection.begin_nested() as savepoint:` ... `await savepoint.rollback()`."
        )
    raise LifecycleError(message)


@contextlib.asynccontextmanager
async def open_session(db: Database) -> AsyncIterator[AsyncSession]:
    """A session of ``db`` for the test's own queries, in the test's transaction.

    It is a unit of work of ``db`` (the app's session settings, its lazy-load check, its
    schema, and ``db.current_session()`` returns it inside the block), except that it never
    commits at the end: whatever it still holds is rolled back. Its own ``commit()`` and
    ``rollback()`` are savepoints while ``db`` is bound (:func:`rolled_back`).
    """
    async with db.unit_of_work() as unit:
        unit.tests_own = True
        try:
            yield unit.session
        finally:
            unit.rollback_only = True


@contextlib.contextmanager
def any_loop_engine(
    url: str | URL, *, pgbouncer: PoolerMode | None = None
) -> Iterator[AsyncEngine]:
    """An engine on ``url`` that every event loop may use, verified on entry.

    It pools no connection (``NullPool``): each ``engine.connect()`` opens a new connection
    in the running loop and closes it at the end, which is what lets tests that each run in
    a new loop share one engine. It has dbscope's per-database set-up (SQLite foreign keys and
    savepoint-safe ``BEGIN``). Built, checked (the server answers) and disposed in a worker
    thread, so it can be entered with or without a running loop.

    Args:
        url: the test database.
        pgbouncer: ``url`` names a PgBouncer in this mode, as the app's Database's
            ``pgbouncer`` setting says (docs/pgbouncer.md).

    Raises:
        ConfigurationError: the URL is invalid, or names an in-memory SQLite database, which
            cannot be shared between connections.
        DatabaseUnavailableError: the server cannot be reached.
    """
    database = Database(url, poolclass=NullPool, pool_pre_ping=False, pgbouncer=pgbouncer)
    if database.settings.is_memory:
        message = (
            f"The test database {database.url!r} is an in-memory SQLite database, which "
            "exists only inside one connection; tests open one connection each. Use a file "
            "instead, e.g. 'sqlite+aiosqlite:///test.db'."
        )
        raise ConfigurationError(message)
    in_new_loop(database.connect)
    try:
        yield database.engine
    finally:
        in_new_loop(database.dispose)


# -- tables, once per test run -----------------------------------------------------------------


def create_tables(
    url: str | URL,
    *,
    metadata: MetaData | None = None,
    alembic_config: str | Path | None = None,
    pgbouncer: PoolerMode | None = None,
) -> None:
    """Create the tables in the test database: from ``metadata``, or by Alembic migrations.

    With ``alembic_config`` (the path of an ``alembic.ini``) the migrations are upgraded to
    ``head``, with ``sqlalchemy.url`` set to ``url``; ``env.py`` must read it from there, as
    Alembic's async template does. Otherwise ``metadata.create_all()`` creates the tables
    that do not exist yet, on a connection made with ``pgbouncer`` (as for
    :func:`any_loop_engine`). Runs in a worker thread with an event loop of its own, so it can
    be called from anywhere, once, before the tests.

    Raises:
        ConfigurationError: neither ``metadata`` nor ``alembic_config`` is given.
    """
    _change_tables(url, metadata, alembic_config, ("upgrade", "head"), "create_all", pgbouncer)


def drop_tables(
    url: str | URL,
    *,
    metadata: MetaData | None = None,
    alembic_config: str | Path | None = None,
    pgbouncer: PoolerMode | None = None,
) -> None:
    """Remove what :func:`create_tables` made: downgrade to ``base``, or ``drop_all()``.

    Alembic keeps its (then empty) version table.

    Raises:
        ConfigurationError: neither ``metadata`` nor ``alembic_config`` is given.
    """
    _change_tables(url, metadata, alembic_config, ("downgrade", "base"), "drop_all", pgbouncer)


NOTHING_TO_CREATE: Final = (
    "Pass the tables to make: metadata=Base.metadata (your declarative base's), or "
    "alembic_config='alembic.ini' to run your migrations."
)


def _change_tables(
    url: str | URL,
    metadata: MetaData | None,
    alembic_config: str | Path | None,
    migration: tuple[str, str],
    ddl: str,
    pgbouncer: PoolerMode | None = None,
) -> None:
    """Run the ``migration`` (command, revision) if there are migrations, else ``ddl``."""
    if alembic_config is not None:
        in_thread(lambda: _alembic(url, alembic_config, *migration))
    elif metadata is not None:
        on_connection(url, getattr(metadata, ddl), pgbouncer=pgbouncer)
    else:
        raise ConfigurationError(NOTHING_TO_CREATE)


def _alembic(url: str | URL, path: str | Path, command_name: str, revision: str) -> None:
    config = load_config(path)
    # The resolved URL, with its async driver, where env.py reads it.
    set_url(config, Database(url).url)
    run_command(config, command_name, revision)


@contextlib.asynccontextmanager
async def maintenance_connection(
    url: URL, *, pgbouncer: PoolerMode | None = None
) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection to the server, for making and dropping databases."""
    maintenance = Database(url, poolclass=NullPool, pool_pre_ping=False, pgbouncer=pgbouncer)
    async with maintenance, maintenance.engine.connect() as connection:
        yield await connection.execution_options(isolation_level="AUTOCOMMIT")


def table_names(connection: Connection, schemas: set[str | None]) -> set[str]:
    """Every table in ``schemas`` (None: the default one), as MetaData keys them."""
    inspector = inspect(connection)
    known = set(inspector.get_schema_names())
    names: set[str] = set()
    for schema in schemas:
        if schema is None:
            names.update(inspector.get_table_names())
        elif schema in known:
            names.update(f"{schema}.{name}" for name in inspector.get_table_names(schema))
    return names


def create_schemas(connection: Connection, schemas: list[str]) -> None:
    """Make each of ``schemas`` that does not exist yet."""
    for schema in schemas:
        connection.execute(CreateSchema(schema, if_not_exists=True))


def on_connection(
    url: str | URL, work: Callable[[Connection], T], *, pgbouncer: PoolerMode | None = None
) -> T:
    """Run ``work`` in a transaction on the database at ``url``, in a thread of its own."""

    async def run() -> T:
        database = Database(url, poolclass=NullPool, pool_pre_ping=False, pgbouncer=pgbouncer)
        async with database, database.engine.begin() as connection:
            return await connection.run_sync(work)

    return in_new_loop(run)


@contextlib.contextmanager
def connection_held(url: str | URL, *, pgbouncer: PoolerMode | None = None) -> Iterator[None]:
    """Keep one connection to the database at ``url`` open for the block, idle, in a thread
    with a loop of its own: the server then counts the database in use all along, even
    while the tests hold no connection (each opening its own, between them none)."""
    opened: concurrent.futures.Future[None] = concurrent.futures.Future()
    release = threading.Event()

    async def hold() -> None:
        database = Database(url, poolclass=NullPool, pool_pre_ping=False, pgbouncer=pgbouncer)
        try:
            async with database, database.engine.connect():
                opened.set_result(None)
                await asyncio.to_thread(release.wait)
        except Exception as error:
            # Once open, its loss (a server restarted) changes nothing the block does.
            if not opened.done():
                opened.set_exception(error)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dbscope-testing") as pool:
        holding = pool.submit(lambda: asyncio.run(hold()))
        concurrent.futures.wait((opened, holding), return_when=concurrent.futures.FIRST_COMPLETED)
        if not opened.done():
            holding.result()  # raises what stopped it before the connection opened
        try:
            opened.result()
            yield
        finally:
            release.set()
            holding.result()


def in_thread(work: Callable[[], T]) -> T:
    """Run ``work`` in a new thread, where no event loop runs, and return its result."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dbscope-testing") as pool:
        return pool.submit(work).result()


def in_new_loop(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``work()`` in a new thread with an event loop of its own: one in the
    caller's thread would replace a loop a test runner set there and runs later (pytest's)."""
    return in_thread(lambda: asyncio.run(work()))
