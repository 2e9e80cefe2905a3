"""Every unit-of-work feature through a real PgBouncer in transaction mode, in both presets.

Each test runs through asyncpg and psycopg, and through the PgBouncer that keeps no prepared
statements (``pgbouncer="transaction"``) and the one that keeps them
(``"transaction-prepared"``), both of tests/pgbouncer/bouncer (the ``pgbouncer`` fixture).
Units run many at once on a pool of 10 in front of PgBouncer's 10 server connections, so
that a transaction rarely gets the server connection the one before it had. What a test sets
up and checks it does on the server directly, never through PgBouncer.
"""

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anyio
import asyncpg
import pytest
from sqlalchemy import Integer, bindparam, cast, column, func, select, table, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from dbscope import ConfigurationError, Database, DatabaseUnavailableError, StatementTimeoutError
from tests.conftest import POSTGRES_DRIVERS, POSTGRES_URL
from tests.documented import block_containing, run_async_block, run_block
from tests.driver_connections import execute, fetch_value, in_transaction
from tests.helpers import admin
from tests.pgbouncer_service import MODES, Bouncers, Mode

# The server itself, for setting up and checking: never through PgBouncer.
DIRECT = make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg").render_as_string(False)
SCHEMA = "pgb_schema"
UNITS = 200
POOL: dict[str, Any] = {"pool_size": 10, "max_overflow": 0}


@dataclass(frozen=True)
class Through:
    """The test database through one PgBouncer, with one driver."""

    url: str
    driver: str
    mode: Mode

    def database(self, **options: Any) -> Database:
        """A Database through this PgBouncer, with its preset."""
        return Database(self.url, pgbouncer=self.mode, **{**POOL, **options})


@pytest.fixture(
    params=[(driver, mode) for mode in MODES for driver in POSTGRES_DRIVERS],
    ids=lambda param: "-".join(param),
)
def through(request: pytest.FixtureRequest, pgbouncer: Bouncers) -> Through:
    """asyncpg and psycopg, through each PgBouncer in turn, with the matching preset."""
    driver, mode = request.param
    return Through(pgbouncer.url(mode, driver, POSTGRES_URL), driver, mode)


@pytest.fixture
async def items() -> AsyncIterator[None]:
    """``pgb_items (id, note)`` and ``pgb_ledger (amount)``, empty; and the schema
    ``pgb_schema`` with a table ``pgb_only_here``; dropped after the test."""
    async with admin(DIRECT) as connection:
        for statement in (
            "DROP TABLE IF EXISTS pgb_items, pgb_ledger",
            f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE",
            "CREATE TABLE pgb_items (id serial PRIMARY KEY, note text NOT NULL)",
            "CREATE TABLE pgb_ledger (amount int NOT NULL)",
            f"CREATE SCHEMA {SCHEMA}",
            f"CREATE TABLE {SCHEMA}.pgb_only_here (value int)",
            f"INSERT INTO {SCHEMA}.pgb_only_here VALUES (7)",
        ):
            await connection.execute(text(statement))
    yield
    async with admin(DIRECT) as connection:
        await connection.execute(text("DROP TABLE IF EXISTS pgb_items, pgb_ledger"))
        await connection.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))


async def failures(db: Database, units: int = UNITS) -> dict[str, int]:
    """Run ``units`` units at once, two statements each; the errors, by their first line."""
    found: dict[str, int] = {}

    async def unit(number: int) -> None:
        try:
            async with db.transaction() as session:
                await session.execute(text("SELECT CAST(:n AS int) + 1"), {"n": number})
                query = "SELECT count(*) FROM pg_class WHERE relpages > :n"
                await session.execute(text(query), {"n": number})
        except Exception as error:  # every failure counts, whatever it is
            line = str(getattr(error, "orig", error)).splitlines()[0]
            found[line] = found.get(line, 0) + 1

    await asyncio.gather(*(unit(number) for number in range(units)))
    return found


async def test_units_never_fail_through_pgbouncer_with_the_preset(through: Through) -> None:
    """200 units at once on 10 connections: none fails in either mode, on either driver."""
    async with through.database() as db:
        assert await failures(db) == {}


async def test_asyncpg_without_the_preset_fails_through_transaction_mode(
    pgbouncer: Bouncers,
) -> None:
    """The preset matters: asyncpg's statement cache, left on, breaks most units."""
    # In the server's `postgres` database: what this leaves on PgBouncer's server connections
    # (statements prepared by name, a session setting) stays out of the other tests' pool.
    url = make_url(pgbouncer.url("transaction", "asyncpg", POSTGRES_URL)).set(database="postgres")
    db = Database(url, **POOL)
    try:
        await db.connect()
        found = await failures(db)
    except (ConfigurationError, DatabaseUnavailableError) as error:  # at connect
        found = {str(error): UNITS}
    finally:
        await db.dispose()
    # 'prepared statement "__asyncpg_stmt_5__" does not exist' (or, for the name of one an
    # earlier client left on that server connection, 'already exists'); now and then asyncpg
    # even reads the rows of another statement ('insufficient data in buffer').
    prepared = sum(count for line, count in found.items() if "prepared statement" in line)
    assert prepared > UNITS // 4, found


async def test_asyncpg_told_of_no_pgbouncer_is_told_to_set_it_at_connect(
    pgbouncer: Bouncers,
) -> None:
    """A server connection behind PgBouncer keeps the statements another client prepared by
    name; a new process's asyncpg, its cache on without the preset, names its first ones the
    same: the ConfigurationError at connect says to set PGBOUNCER (before: 'the driver refused
    its arguments: check the options in the URL')."""
    name = f"dbscope_pgb_advice_{os.getpid()}"
    async with admin(DIRECT) as connection:
        await connection.execute(text(f"CREATE DATABASE {name}"))
    url = make_url(pgbouncer.url("transaction", "asyncpg", POSTGRES_URL)).set(database=name)
    try:
        # The database's one server connection behind PgBouncer keeps the names asyncpg gives
        # a process's first statements (a counter of the process).
        other = await asyncpg.connect(url.set(drivername="postgresql").render_as_string(False))
        names = [f'PREPARE "__asyncpg_stmt_{n}__" AS SELECT {n}' for n in range(1, 21)]
        await other.execute("; ".join(names))  # one simple query: nothing named by asyncpg
        await other.close()
        connect = (
            "import asyncio, sys, dbscope; asyncio.run(dbscope.Database(sys.argv[1]).connect())"
        )
        rendered = url.render_as_string(hide_password=False)
        result = await anyio.run_process([sys.executable, "-c", connect, rendered], check=False)
    finally:
        async with admin(DIRECT) as connection:
            await connection.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
    said = result.stderr.decode()
    assert "dbscope.ConfigurationError" in said, said
    assert "already exists" in said
    assert "Set PGBOUNCER=transaction" in said


async def test_units_that_only_read_run_outside_transactions_through_pgbouncer(
    through: Through,
) -> None:
    """200 units at once, each two plain reads with parameters: no transaction begins, so
    PgBouncer may serve each exchange (asyncpg's prepare and execute too) on another server
    connection; none fails, and each reads what it asked for."""
    classes = table("pg_class", column("relpages"))

    async def unit(number: int) -> tuple[int, bool]:
        async with db.transaction() as session:
            plus_one = await session.scalar(select(cast(bindparam("n", number), Integer) + 1))
            count = select(func.count()).select_from(classes).where(classes.c.relpages > number)
            await session.scalar(count)
            raw = await (await session.connection()).get_raw_connection()
            began = in_transaction(raw.driver_connection)
            return int(plus_one or 0), began

    async with through.database() as db:
        seen = await asyncio.gather(*(unit(number) for number in range(UNITS)))
    assert seen == [(number + 1, False) for number in range(UNITS)]


async def test_each_mode_keeps_prepared_statements_or_none(through: Through) -> None:
    """'transaction' prepares nothing on the server; 'transaction-prepared' keeps the drivers'
    caches, which PgBouncer prepares on the server connection under names of its own."""
    marker = f"pgb_marker_{through.driver}"
    query = f"SELECT 1 AS {marker}"
    count = "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE :pattern"
    async with through.database() as db, db.transaction() as session:
        for _ in range(8):  # psycopg prepares a statement run more than 5 times
            await session.execute(text(query))
        prepared = await session.scalar(text(count), {"pattern": f"%{marker}%"})
    assert prepared == (0 if through.mode == "transaction" else 1)


async def on_every_server_connection(db: Database, statement: str) -> list[tuple[str, int]]:
    """Run ``statement`` in 10 units at once, which PgBouncer (10 server connections per
    database) gives a server connection each; what each saw, and on which server process."""
    barrier = asyncio.Barrier(POOL["pool_size"])

    async def unit() -> tuple[str, int]:
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))  # the transaction begins
            await barrier.wait()  # ten transactions open: ten server connections
            seen = await session.scalar(text(statement))
            return str(seen), int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)

    return await asyncio.wait_for(asyncio.gather(*(unit() for _ in range(10))), 10)


async def test_no_session_setting_reaches_the_server_connections(through: Through) -> None:
    """Nothing is set at connect: once reset on every server connection, the setting dbscope
    sets at connect without PgBouncer (client_connection_check_interval) stays the server's
    default on each, for a Database that connected since."""
    reset = "SELECT set_config('client_connection_check_interval', '0', false)"
    async with through.database() as db:  # anything an earlier client left, undone
        await on_every_server_connection(db, reset)
    async with through.database() as db:
        seen = await on_every_server_connection(db, "SHOW client_connection_check_interval")
    assert {setting for setting, _ in seen} == {"0"}
    assert len({pid for _, pid in seen}) == POOL["pool_size"]


async def test_each_database_keeps_its_own_application_name(through: Through) -> None:
    """PgBouncer carries application_name per client: two apps on one PgBouncer each see
    their own, in every unit."""

    async def names(db: Database) -> set[str]:
        async def one() -> str:
            async with db.transaction() as session:
                return str(await session.scalar(text("SELECT current_setting('application_name')")))

        return set(await asyncio.gather(*(one() for _ in range(30))))

    async with (
        through.database(application_name="pgb-a") as first,
        through.database(application_name="pgb-b") as second,
    ):
        seen = await asyncio.gather(names(first), names(second))
    assert list(seen) == [{"pgb-a"}, {"pgb-b"}]


async def test_a_time_zone_set_at_connect_reaches_every_unit(through: Through) -> None:
    """A startup parameter PgBouncer carries per client (TimeZone, through asyncpg's
    server_settings or libpq's options) holds in every unit, beside an app without it."""
    given: dict[str, Any]
    if through.driver == "asyncpg":
        given = {"server_settings": {"TimeZone": "Asia/Tokyo"}}
    else:
        given = {"options": "-c TimeZone=Asia/Tokyo"}

    async def zones(db: Database) -> set[str]:
        async def one() -> str:
            async with db.transaction() as session:
                return str(await session.scalar(text("SHOW TimeZone")))

        return set(await asyncio.gather(*(one() for _ in range(20))))

    async with through.database(connect_args=given) as tokyo, through.database() as plain:
        seen = await asyncio.gather(zones(tokyo), zones(plain))
    assert seen[0] == {"Asia/Tokyo"}
    assert "Asia/Tokyo" not in seen[1]


@pytest.mark.usefixtures("items")
async def test_a_schema_applies_to_its_own_units_only(through: Through) -> None:
    """SET LOCAL search_path per unit: the schema's units read its table, and the units of a
    Database without it, on the same server connections, never see the schema."""

    async def read(db: Database, query: str) -> str:
        async with db.transaction() as session:
            return str(await session.scalar(text(query)))

    async with through.database(schema=SCHEMA) as scoped, through.database() as plain:
        seen = await asyncio.gather(
            *(read(scoped, "SELECT value FROM pgb_only_here") for _ in range(20)),
            *(read(plain, "SELECT current_setting('search_path')") for _ in range(20)),
        )
    assert set(seen) == {"7", '"$user", public'}


@pytest.mark.usefixtures("items")
async def test_a_read_only_unit_refuses_writes_and_leaves_none_behind(through: Through) -> None:
    """A read-only unit is READ ONLY on the server; the units after it write as before."""
    async with through.database() as db:
        with pytest.raises(DBAPIError, match="read-only transaction"):
            async with db.transaction(read_only=True) as session:
                await session.execute(text("INSERT INTO pgb_items (note) VALUES ('no')"))

        async def write(number: int) -> None:
            async with db.transaction() as session:
                await session.execute(text("INSERT INTO pgb_items (note) VALUES (:n)"), {"n": "w"})

        await asyncio.gather(*(write(number) for number in range(20)))
    async with admin(DIRECT) as connection:
        assert await connection.scalar(text("SELECT count(*) FROM pgb_items")) == 20


async def test_a_statement_timeout_cancels_its_statement_only(through: Through) -> None:
    """statement_timeout (SET LOCAL) cancels a long statement; later units have no timeout."""
    async with through.database() as db:
        with pytest.raises(StatementTimeoutError):
            async with db.transaction(statement_timeout=0.2) as session:
                await session.execute(text("SELECT pg_sleep(5)"))

        async def timeout() -> str:
            async with db.transaction() as session:
                return str(await session.scalar(text("SHOW statement_timeout")))

        assert set(await asyncio.gather(*(timeout() for _ in range(20)))) == {"0"}


@pytest.mark.usefixtures("items")
async def test_retries_settle_a_real_serialization_failure(through: Through) -> None:
    """Two SERIALIZABLE units that read the ledger and add to it conflict; the one the server
    fails is run again, and both end committed."""
    barrier = asyncio.Barrier(2)

    async def add(db: Database) -> int:
        retrying = db.retrying(isolation_level="SERIALIZABLE", attempts=5, backoff=0.01)
        async for attempt in retrying:
            async with attempt as session:
                total = await session.scalar(text("SELECT SUM(amount) FROM pgb_ledger"))
                if retrying.retries == 0:
                    await asyncio.wait_for(barrier.wait(), 5)  # both have read
                insert = "INSERT INTO pgb_ledger (amount) VALUES (:amount)"
                await session.execute(text(insert), {"amount": int(total or 0) + 1})
        return retrying.retries

    async with through.database() as db:
        retries = await asyncio.gather(add(db), add(db))
    # One never retried; the other at least once. More than once when its retry read before
    # the first one's COMMIT had come back through PgBouncer: a conflict again, as it should.
    fewer, more = sorted(retries)
    assert fewer == 0
    assert 1 <= more < 5
    async with admin(DIRECT) as connection:
        amounts = await connection.scalars(text("SELECT amount FROM pgb_ledger ORDER BY amount"))
        assert list(amounts) == [1, 2]


async def test_leases_run_statements_and_driver_transactions(through: Through) -> None:
    """db.lease() through PgBouncer: each statement its own transaction, and the driver's
    transaction keeps its SET LOCAL to its end, 50 leases at once on 5 connections."""

    async def lease(number: int) -> tuple[int, str]:
        async with db.lease() as connection:
            value = await fetch_value(connection, f"SELECT {number} + 1")
            async with connection.transaction():
                await execute(connection, "SET LOCAL statement_timeout = 1234")
                timeout = await fetch_value(connection, "SHOW statement_timeout")
            return int(value), str(timeout)

    async with through.database(pool_size=5) as db:
        seen = await asyncio.gather(*(lease(number) for number in range(50)))
    assert seen == [(number + 1, "1234ms") for number in range(50)]


# -- docs/pgbouncer.md: each python block runs -------------------------------------------------

GUIDE = "docs/pgbouncer.md"


@pytest.mark.parametrize("mode", MODES)
async def test_the_guides_database_serves_units_through_pgbouncer(
    pgbouncer: Bouncers, mode: Mode
) -> None:
    """The guide's Database, on the PgBouncer of each mode (the block's, then with the other
    mode), runs units at once without a failure."""
    code = block_containing(GUIDE, 'pgbouncer="transaction"')
    url = pgbouncer.url(mode, "asyncpg", POSTGRES_URL)
    replace = {
        '"postgresql+asyncpg://app@localhost:6432/app"': repr(url),
        'pgbouncer="transaction"': f"pgbouncer={mode!r}",
    }
    db: Database = run_block(code, url, replace=replace)["db"]
    async with db:
        assert db.settings.pgbouncer == mode
        assert await failures(db, units=50) == {}


async def test_the_guides_lease_runs_its_transaction_through_pgbouncer(
    pgbouncer: Bouncers,
) -> None:
    """The lease block: a driver transaction with its SET LOCAL, through PgBouncer."""
    code = block_containing(GUIDE, "async with db.lease() as connection:")
    url = pgbouncer.url("transaction", "asyncpg", POSTGRES_URL)
    async with Database(url, pgbouncer="transaction") as db:
        namespace: dict[str, Any] = {"db": db}
        await run_async_block(code, namespace)
    assert namespace["count"] > 0


@pytest.mark.parametrize("mode", MODES)
async def test_a_user_pgbouncer_refuses_is_a_configuration_error(
    pgbouncer: Bouncers, mode: Mode
) -> None:
    """PgBouncer refuses a user missing from its auth_file with SQLSTATE 08P01, a protocol
    violation, which asyncpg reports as such: a mistake to fix, not an outage to wait out
    (before, 'could not be reached', and a 503 at run time)."""
    url = make_url(pgbouncer.url(mode, "asyncpg", POSTGRES_URL)).set(username="dbscope_nobody")
    db = Database(url.render_as_string(hide_password=False), pgbouncer=mode)
    with pytest.raises(ConfigurationError, match="dbscope_nobody") as refused:
        await db.connect()
    assert "authentication failed" in str(refused.value)
