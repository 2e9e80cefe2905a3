"""Schema changes made while the app runs: the prepared statements they make stale.

PostgreSQL refuses to run a prepared statement whose result columns changed since it was
prepared (a column's type altered, a column added to a ``SELECT *``'s table): "cached plan
must not change result type". Both drivers prepare: asyncpg every statement, psycopg one run
``prepare_threshold`` (5) times on a connection. The schema change here is made from a
connection of the test's own, as a migration run by another process would be; the units run
on a pool of one connection, so every unit meets the statement that connection prepared.
"""

from collections.abc import AsyncIterator

import asyncpg
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from dbscope import Database
from tests.conftest import POSTGRES_DRIVERS
from tests.helpers import Tables, admin
from tests.pgbouncer_service import Bouncers

pytestmark = pytest.mark.parametrize("db_backend", POSTGRES_DRIVERS)

items = Table(
    "stale_items",
    MetaData(),
    Column("id", Integer, primary_key=True),
    Column("name", String(50)),
    Column("qty", Integer),
)
# Runs enough for psycopg to have prepared the statement.
WARM_UP = 8


@pytest.fixture
async def one_row(database_url: str, tables: Tables) -> None:
    """The table, of one row."""
    await tables.create_all(items.metadata)
    async with admin(database_url) as connection:
        await connection.execute(items.insert().values(id=1, name="one", qty=0))


@pytest.fixture
async def db(database_url: str, one_row: None) -> AsyncIterator[Database]:
    """A Database of one pooled connection, on a table of one row."""
    async with Database(database_url, pool_size=1, max_overflow=0) as database:
        yield database


@pytest.fixture
async def bounced(
    database_url: str, db_backend: str, pgbouncer: Bouncers, one_row: None
) -> AsyncIterator[Database]:
    """A Database of one pooled connection through the PgBouncer that keeps prepared
    statements, on a table of one row."""
    url = pgbouncer.url("transaction-prepared", db_backend, database_url)
    pgbouncer_mode = "transaction-prepared"
    async with Database(url, pool_size=1, max_overflow=0, pgbouncer=pgbouncer_mode) as database:
        yield database


async def stale_reads(db: Database, database_url: str) -> int:
    """How many of 4 reads fail after the schema change that makes the warm read stale."""
    for _ in range(WARM_UP):
        await read_name(db)
    await widen_name(database_url)
    failures = 0
    for _ in range(4):
        try:
            await read_name(db)
        except DBAPIError:
            failures += 1
    return failures


async def widen_name(database_url: str) -> None:
    """The schema change: the name column's type changes, and so the result's of a read."""
    async with admin(database_url) as connection:
        await connection.exec_driver_sql("ALTER TABLE stale_items ALTER COLUMN name TYPE text")


async def read_name(db: Database) -> str | None:
    """A read-only unit's plain read, which runs outside a transaction."""
    async with db.transaction(read_only=True) as session:
        return await session.scalar(select(items.c.name).where(items.c.id == 1))


async def test_a_read_made_stale_by_a_schema_change_fails_once(
    db: Database, database_url: str
) -> None:
    """A stale statement fails the unit running it, and the connection's next units read."""
    assert await stale_reads(db, database_url) <= 1
    assert await read_name(db) == "one"


async def test_retrying_runs_again_a_unit_made_stale_by_a_schema_change(
    db: Database, database_url: str
) -> None:
    """db.retrying() runs again a unit whose statement a schema change made stale."""
    for _ in range(WARM_UP):
        await read_name(db)
    await widen_name(database_url)
    retrying = db.retrying(attempts=3, backoff=0)
    async for attempt in retrying:
        async with attempt as session:
            name = await session.scalar(select(items.c.name).where(items.c.id == 1))
            await session.execute(update(items).values(qty=items.c.qty + 1))
    assert name == "one"
    assert retrying.retries == 1
    async with admin(database_url) as connection:
        assert await connection.scalar(select(items.c.qty)) == 1


async def test_behind_pgbouncer_a_stale_read_heals_on_psycopg_and_after_reconnect_on_asyncpg(
    bounced: Database, database_url: str, db_backend: str, pgbouncer: Bouncers
) -> None:
    """Through PgBouncer, the stale statement is prepared on PgBouncer's server connection,
    under PgBouncer's own name, for every client whose statement has that text. psycopg's
    DEALLOCATE ALL makes PgBouncer (1.22+) drop its statements there too: one read fails.
    Nothing dbscope sends for asyncpg does: its reads fail until PgBouncer's RECONNECT
    (docs/pgbouncer.md) has its server connections made again."""
    failures = await stale_reads(bounced, database_url)
    if db_backend == "psycopg":
        assert failures <= 1
    else:
        assert failures == 4
        database = make_url(database_url).database
        console = make_url(pgbouncer.prepared).set(database="pgbouncer")
        connection = await asyncpg.connect(console.render_as_string(hide_password=False))
        try:
            await connection.execute(f"RECONNECT {database}")
        finally:
            await connection.close()
    assert await read_name(bounced) == "one"


async def leased_read(db: Database) -> str:
    """The name, read through a leased driver connection, with a parameter (psycopg
    prepares only statements run with parameters)."""
    async with db.lease() as connection:
        if db.engine.dialect.driver == "asyncpg":
            return str(await connection.fetchval("SELECT name FROM stale_items WHERE id = $1", 1))
        cursor = await connection.execute("SELECT name FROM stale_items WHERE id = %s", (1,))
        row = await cursor.fetchone()
        return str(row[0])


async def test_a_lease_made_stale_by_a_schema_change_fails_once(
    db: Database, database_url: str
) -> None:
    """A lease's statement, prepared before the schema change, fails once at most: the
    connection's next lease reads. On psycopg every later lease of that connection failed."""
    for _ in range(WARM_UP):
        await leased_read(db)
    await widen_name(database_url)
    errors = []
    for _ in range(4):
        try:
            await leased_read(db)
        except Exception as error:  # the driver's own class: asyncpg's or psycopg's
            errors.append(str(error))
    assert len(errors) <= 1
    assert all("cached plan must not change result type" in error for error in errors)
    assert await leased_read(db) == "one"
