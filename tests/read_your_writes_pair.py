"""Helpers of the read-your-writes tests (tests/test_read_your_writes*.py; their fixtures
are in tests/read_your_writes_fixtures.py): a database of these tests' own on the replica pair
(tests/replica_cluster.py), with an empty ``ryw_notes`` table, and what a client is told.
"""

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.helpers import Tables, admin
from tests.replica_cluster import wait_for_replay

DATABASE = "test_r7"
HEADER = "dbscope-writes"
COOKIE = "dbscope_writes"
# The replica applies each commit this late: a read right after the write is stale for sure,
# and one that waits for its token (the app's replica_wait) is served once it is applied.
DELAY_MS = 2000


@dataclass(frozen=True)
class Pair:
    """The primary's and the replica's URLs of these tests' own database."""

    primary: str
    replica: str


def in_own_database(url: str) -> str:
    """``url`` naming these tests' database instead of the pair's."""
    return make_url(url).set(database=DATABASE).render_as_string(hide_password=False)


@contextlib.asynccontextmanager
async def notes_table(primary_url: str, replica_url: str) -> AsyncIterator[Pair]:
    """The database (made if the pair is new) with an empty ``ryw_notes``, replayed."""
    pair = Pair(in_own_database(primary_url), in_own_database(replica_url))
    server = make_url(primary_url).set(database="postgres")
    async with admin(server.render_as_string(hide_password=False)) as connection:
        exists = text("SELECT 1 FROM pg_database WHERE datname = :name")
        if await connection.scalar(exists, {"name": DATABASE}) is None:
            await connection.execute(text(f"CREATE DATABASE {DATABASE}"))
    tables = Tables(pair.primary)
    await tables.create("ryw_notes", "id serial PRIMARY KEY, body text")
    await wait_for_replay(pair.primary, pair.replica)
    try:
        yield pair
    finally:
        await tables.drop_all()


def browser(base_url: str) -> httpx.AsyncClient:
    """A client that keeps cookies and follows redirects, as a browser does."""
    return httpx.AsyncClient(base_url=base_url, follow_redirects=True)
