"""The fixtures of the replica tests (tests/test_replicas*.py), which register this module as
a plugin (``pytest_plugins``) and never import it:

- ``urls``: the primary's and the replica's URL of conftest's ``replica_pair`` through each
  PostgreSQL driver in turn, in the database ``DBSCOPE_TEST_REPLICA_DATABASE`` names
  (default ``test``), made on the primary if missing, with a fresh table ``items (id,
  note)`` replayed on the replica; the test has the pair to itself (``alone()``), so it may
  pause, delay or stop the replica.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.conftest import POSTGRES_DRIVERS
from tests.helpers import admin
from tests.replica_cluster import ReplicaPair, alone, wait_for_replay
from tests.replica_reads import DATABASE, TABLE


@pytest.fixture(params=POSTGRES_DRIVERS)
async def urls(
    request: pytest.FixtureRequest, replica_pair: ReplicaPair
) -> AsyncIterator[tuple[str, str]]:
    """The primary's and the replica's URL through asyncpg, then psycopg, in the test
    database, with an empty ``items`` table that the replica has replayed; the pair is the
    test's alone among the replica tests meanwhile."""
    with alone():
        yield await _prepare(replica_pair, str(request.param))


async def _prepare(pair: ReplicaPair, driver: str) -> tuple[str, str]:
    primary, replica = (
        make_url(pair.url(role, driver)).set(database=DATABASE).render_as_string(False)
        for role in ("primary", "replica")
    )
    await _make_database(pair.url("primary", "asyncpg"))
    async with admin(primary) as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        await connection.execute(text(f"CREATE TABLE {TABLE} (id int PRIMARY KEY, note text)"))
    await wait_for_replay(primary, replica)
    return primary, replica


async def _make_database(server_url: str) -> None:
    server = make_url(server_url).set(database="postgres").render_as_string(False)
    async with admin(server) as connection:
        found = await connection.scalar(
            text("SELECT count(*) FROM pg_database WHERE datname = :name"), {"name": DATABASE}
        )
        if not found:
            await connection.execute(text(f'CREATE DATABASE "{DATABASE}"'))
