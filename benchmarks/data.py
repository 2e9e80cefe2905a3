"""The benchmark table: 10,000 rows of ``bench_world(id, randomnumber)`` in PostgreSQL."""

from __future__ import annotations

import random

import asyncpg

from benchmarks.variants.common import ROWS, TABLE

# Two harness runs at once load the table one after the other (any constant will do).
LOCK_KEY = 0x62656E6368
SEED = 20_000


async def ensure_world(url: str) -> bool:
    """Create and fill ``bench_world`` unless it already holds ids 1..10,000.

    Returns whether the table was (re)loaded.
    """
    connection = await asyncpg.connect(url, timeout=10)
    try:
        async with connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock($1)", LOCK_KEY)
            await connection.execute(
                f"CREATE TABLE IF NOT EXISTS {TABLE} "
                "(id integer PRIMARY KEY, randomnumber integer NOT NULL)"
            )
            count, low, high = await connection.fetchrow(
                f"SELECT count(*), min(id), max(id) FROM {TABLE}"
            )
            if (count, low, high) == (ROWS, 1, ROWS):
                return False
            await connection.execute(f"TRUNCATE {TABLE}")
            numbers = random.Random(SEED)
            rows = [(i, numbers.randint(1, ROWS)) for i in range(1, ROWS + 1)]
            await connection.copy_records_to_table(
                TABLE, records=rows, columns=["id", "randomnumber"]
            )
        await connection.execute(f"ANALYZE {TABLE}")
        return True
    finally:
        await connection.close()


async def stored_numbers(url: str, ids: list[int]) -> dict[int, int]:
    """The ``randomnumber`` stored for each of ``ids``."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        rows = await connection.fetch(
            f"SELECT id, randomnumber FROM {TABLE} WHERE id = any($1::integer[])", ids
        )
        return {row["id"]: row["randomnumber"] for row in rows}
    finally:
        await connection.close()


async def server_version(url: str) -> str:
    """The PostgreSQL server's version string."""
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()
