"""Speaking each driver's own API on the connection a lease hands over.

``db.lease()`` and ``Depends(db.leased)`` lend the driver's connection itself (asyncpg,
psycopg, asyncmy or aiosqlite), so the tests of tests/test_lease.py and
tests/test_lease_http.py talk to it in each driver's words, through these helpers.
"""

from typing import Any

# A pool of one connection that gives up waiting for it soon.
SMALL_POOL: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.5}


def driver_of(connection: Any) -> str:
    """'asyncpg', 'psycopg', 'asyncmy' or 'aiosqlite': the package of the driver connection."""
    return type(connection).__module__.partition(".")[0]


async def fetch_value(connection: Any, sql: str) -> Any:
    """The first column of the first row of ``sql``, through the driver's own API."""
    driver = driver_of(connection)
    if driver == "asyncpg":
        return await connection.fetchval(sql)
    if driver == "psycopg":
        cursor = await connection.execute(sql)
        row = await cursor.fetchone()
    elif driver == "asyncmy":
        async with connection.cursor() as cursor:
            await cursor.execute(sql)
            row = await cursor.fetchone()
    else:
        async with connection.execute(sql) as cursor:
            row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def execute(connection: Any, sql: str) -> None:
    """Run one statement through the driver's own API."""
    driver = driver_of(connection)
    if driver in ("asyncpg", "psycopg"):
        await connection.execute(sql)
    elif driver == "asyncmy":
        async with connection.cursor() as cursor:
            await cursor.execute(sql)
    else:
        await (await connection.execute(sql)).close()


def in_transaction(connection: Any) -> bool:
    """Whether the driver connection has a transaction open (its own state, no round trip)."""
    driver = driver_of(connection)
    if driver == "asyncpg":
        return bool(connection.is_in_transaction())
    if driver == "psycopg":
        from psycopg.pq import TransactionStatus

        return bool(connection.info.transaction_status != TransactionStatus.IDLE)
    if driver == "asyncmy":
        return bool(connection.get_transaction_status())
    return bool(connection.in_transaction)


def backend_id_query(connection: Any) -> str:
    """The query naming the server process behind the connection."""
    if driver_of(connection) == "asyncmy":
        return "SELECT CONNECTION_ID()"
    return "SELECT pg_backend_pid()"
