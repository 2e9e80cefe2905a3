"""Helpers of the read-your-writes tests (tests/test_read_your_writes*.py; their fixtures
are in tests/read_your_writes_fixtures.py): a database of these tests' own on the replica pair
(tests/replica_cluster.py), with an empty ``ryw_notes`` table, what a client is told, and the
app of tests/apps/read_your_writes_app.py served by uvicorn.
"""

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.engine import make_url

from tests.helpers import Tables, admin
from tests.replica_cluster import wait_for_replay
from tests.server import running_server

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


APP = "read_your_writes_app:app"
# The position of a token whose write's position could not be read: its reads go to the
# primary, and so do those of a client that sends it of its own.
UNKNOWN_POSITION = "FFFFFFFFFFFFFFFF"


@contextlib.contextmanager
def served(pair: Pair, *, middleware: bool = True, wait: float = 10.0) -> Iterator[str]:
    """The app on ``pair`` under uvicorn (with ReadYourWrites, or without): its base URL.

    ``wait`` is its replica_wait; the replicas are checked at start-up only (the interval is
    long), so that the replica's statements counted during a test are the test's reads.
    """
    env = {
        "DATABASE_URL": pair.primary,
        "DATABASE_REPLICA_URLS": pair.replica,
        "REPLICA_WAIT": str(wait),
        "REPLICA_CHECK_INTERVAL": "60",
        # Other tests' writes on the shared pair must not make the paused replica "lagging".
        "REPLICA_MAX_LAG": "1GB",
        "READ_YOUR_WRITES": "on" if middleware else "off",
    }
    with running_server(APP, env) as base_url:
        yield base_url


async def app_stats(client: httpx.AsyncClient) -> dict[str, Any]:
    """The app's replica state, reads served and fallbacks (``db.stats()``)."""
    stats: dict[str, Any] = (await client.get("/stats")).json()
    return stats


async def api_write(base_url: str, body: str) -> tuple[int, str]:
    """Store a note as an API client does; its id and the write token of the response."""
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post("/api/notes", json={"body": body})
    assert response.status_code == 201
    return int(response.json()["id"]), response.headers[HEADER]


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
