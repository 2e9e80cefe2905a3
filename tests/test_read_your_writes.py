"""Read-your-writes across requests (dbscope.fastapi.ReadYourWrites), on a real primary and
its streaming replica (tests/replica_cluster.py), in a database of these tests' own.

The app (tests/apps/read_your_writes_app.py) runs under uvicorn in a subprocess and is spoken
to over HTTP. Stale reads are made for real: the replica applies each commit late
(``recovery_min_apply_delay``) or its replay is paused. Every test that reads its own writes
also shows that the replica really served reads: in the app's ``db.stats()`` and in the
replica's own statistics (pg_stat_statements), so that a replica which does not stream
cannot make them pass.
"""

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoResultFound
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database
from dbscope.fastapi import ReadYourWrites
from tests.conftest import POSTGRES_URL, require_server
from tests.documented import block_containing, run_async_block, run_block, serving
from tests.helpers import Tables, admin, app_with, client_for
from tests.replica_cluster import (
    ReplicaPair,
    apply_delayed,
    replay_paused,
    statements_served,
    wait_for_replay,
)
from tests.server import free_port, running_server

APP = "read_your_writes_app:app"
DATABASE = "test_r7"
HEADER = "dbscope-writes"
COOKIE = "dbscope_writes"
# The replica applies each commit this late: a read right after the write is stale for sure,
# and one that waits for its token (replica_wait below) is served once it is applied.
DELAY_MS = 2000
# Past any real position: a replica never replays this far.
FORGED_POSITION = "FFFFFFFFFFFFFFFF"
T = TypeVar("T")


@dataclass(frozen=True)
class Pair:
    """The primary's and the replica's URLs of this file's own database."""

    primary: str
    replica: str


def in_own_database(url: str) -> str:
    """``url`` naming this file's database instead of the pair's."""
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


@pytest.fixture
async def notes(primary_url: str, replica_url: str) -> AsyncIterator[Pair]:
    """The notes table on the pair, through each PostgreSQL driver in turn."""
    async with notes_table(primary_url, replica_url) as pair:
        yield pair


@pytest.fixture
async def notes_asyncpg(replica_pair: ReplicaPair) -> AsyncIterator[Pair]:
    """The notes table on the pair, through asyncpg (where the driver does not matter)."""
    primary, replica = (replica_pair.url(role, "asyncpg") for role in ("primary", "replica"))
    async with notes_table(primary, replica) as pair:
        yield pair


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


def browser(base_url: str) -> httpx.AsyncClient:
    """A client that keeps cookies and follows redirects, as a browser does."""
    return httpx.AsyncClient(base_url=base_url, follow_redirects=True)


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


# -- POST, redirect, GET ---------------------------------------------------------------------


async def test_a_browser_reads_its_own_write_after_post_redirect_get(notes: Pair) -> None:
    """POST, 303, GET with the browser's cookie: the GET sees the write, served by the
    replica once it applied it, though the replica applies each commit 2 s late."""
    with served(notes) as base_url:
        served_before = await statements_served(notes.replica)
        async with apply_delayed(notes.replica, DELAY_MS), browser(base_url) as client:
            response = await client.post("/notes", params={"body": "mine"})
            stats = await app_stats(client)
    redirect = response.history[0]
    assert redirect.status_code == 303
    assert redirect.cookies[COOKIE] == redirect.headers[HEADER]
    assert response.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {}}
    assert await statements_served(notes.replica) > served_before


async def test_without_the_middleware_the_same_read_is_stale(notes_asyncpg: Pair) -> None:
    """The same POST, 303, GET without ReadYourWrites reads the replica before it applied the
    write: the note is not found (what the middleware prevents)."""
    with served(notes_asyncpg, middleware=False) as base_url:
        async with apply_delayed(notes_asyncpg.replica, DELAY_MS), browser(base_url) as client:
            response = await client.post("/notes", params={"body": "mine"})
            stats = await app_stats(client)
    assert "set-cookie" not in response.history[0].headers
    assert response.json() == {"body": None, "on_replica": True}
    assert stats["served"] == 1


async def test_without_the_cookie_the_same_read_is_stale(notes_asyncpg: Pair) -> None:
    """A client that drops the cookie reads the replica before it applied the write."""
    with served(notes_asyncpg) as base_url:
        async with apply_delayed(notes_asyncpg.replica, DELAY_MS):
            async with httpx.AsyncClient(base_url=base_url) as writer:
                redirect = await writer.post("/notes", params={"body": "mine"})
            async with httpx.AsyncClient(base_url=base_url) as reader:
                response = await reader.get(redirect.headers["location"])
                stats = await app_stats(reader)
    assert COOKIE in redirect.cookies
    assert response.json() == {"body": None, "on_replica": True}
    assert stats["served"] == 1


async def test_a_read_the_replica_has_not_replayed_goes_to_the_primary(
    notes_asyncpg: Pair,
) -> None:
    """With the replica's replay paused, the GET after the write reads the primary (a
    fallback counted as "behind") and sees the write; after replay resumes, the replica
    serves the same GET."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        async with browser(base_url) as client:
            async with replay_paused(pair.replica):
                paused = await client.post("/notes", params={"body": "mine"})
            await wait_for_replay(pair.primary, pair.replica)
            resumed = await client.get(paused.url.path)
            stats = await app_stats(client)
    assert paused.json() == {"body": "mine", "on_replica": False}
    assert resumed.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {"behind": 1}}


# -- API clients -----------------------------------------------------------------------------


async def test_an_api_client_that_echoes_the_header_reads_its_own_write(notes: Pair) -> None:
    """An API client without cookies that sends the response header back reads its write,
    served by the replica once it applied it."""
    with served(notes) as base_url:
        served_before = await statements_served(notes.replica)
        async with apply_delayed(notes.replica, DELAY_MS):
            note, token = await api_write(base_url, "mine")
            async with httpx.AsyncClient(base_url=base_url) as client:
                response = await client.get(f"/notes/{note}", headers={HEADER: token})
                stats = await app_stats(client)
    assert response.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {}}
    assert await statements_served(notes.replica) > served_before


# -- tokens are data -------------------------------------------------------------------------


async def test_a_forged_token_costs_only_reads_from_the_primary(notes_asyncpg: Pair) -> None:
    """A token of the right cluster but a position no replica reaches reads the primary
    (counted "behind") and answers correctly; the same read without it uses the replica."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        note, token = await api_write(base_url, "mine")
        await wait_for_replay(pair.primary, pair.replica)
        forged = f"{token.split(':')[0]}:{FORGED_POSITION}"
        async with httpx.AsyncClient(base_url=base_url) as client:
            response = await client.get(f"/notes/{note}", headers={HEADER: forged})
            plain = await client.get(f"/notes/{note}")
            stats = await app_stats(client)
    assert response.json() == {"body": "mine", "on_replica": False}
    assert plain.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {"behind": 1}}


async def test_a_token_of_another_cluster_is_ignored(notes_asyncpg: Pair) -> None:
    """A cookie token naming another cluster, however far its position, does not hold the
    read back: the replica serves it, and nothing falls back to the primary."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        note, token = await api_write(base_url, "mine")
        await wait_for_replay(pair.primary, pair.replica)
        cluster = int(token.split(":")[0])
        other = f"{cluster + 1}:{FORGED_POSITION}"
        async with httpx.AsyncClient(base_url=base_url) as client:
            cookie = {"cookie": f"{COOKIE}={other}"}
            response = await client.get(f"/notes/{note}", headers=cookie)
            stats = await app_stats(client)
    assert response.json() == {"body": "mine", "on_replica": True}
    assert stats == {"state": "ready", "served": 1, "fallbacks": {}}


async def test_garbled_and_oversized_tokens_are_ignored(notes_asyncpg: Pair) -> None:
    """Text that is no token, a position that is no number, and a header longer than any
    honest one (even one holding a forged token) are ignored: the replica serves each read."""
    pair = notes_asyncpg
    with served(pair, wait=0.2) as base_url:
        note, token = await api_write(base_url, "mine")
        await wait_for_replay(pair.primary, pair.replica)
        cluster = token.split(":")[0]
        oversized = ",".join([f"{cluster}:{FORGED_POSITION}"] + ["0:0"] * 200)
        sent = [
            {HEADER: "not a token"},
            {HEADER: f"{cluster}:not-hex"},
            {HEADER: oversized},
            {"cookie": f"{COOKIE}=%%%; other=1"},
        ]
        async with httpx.AsyncClient(base_url=base_url) as client:
            responses = [await client.get(f"/notes/{note}", headers=each) for each in sent]
            stats = await app_stats(client)
    assert [response.json() for response in responses] == [
        {"body": "mine", "on_replica": True}
    ] * len(sent)
    assert stats == {"state": "ready", "served": len(sent), "fallbacks": {}}


async def test_a_request_that_only_reads_gets_no_cookie(notes_asyncpg: Pair) -> None:
    """Reads, with the tokens of an earlier write or without any, set no cookie and send no
    token header; the write before them did."""
    with served(notes_asyncpg) as base_url:
        async with browser(base_url) as client:
            written = await client.post("/notes", params={"body": "mine"})
            with_cookie = await client.get(written.url.path)
        async with httpx.AsyncClient(base_url=base_url) as client:
            without = await client.get(written.url.path)
            stats = await app_stats(client)
    assert COOKIE in written.history[0].cookies
    for response in (with_cookie, without):
        assert response.json()["body"] == "mine"
        assert "set-cookie" not in response.headers
        assert HEADER not in response.headers
    assert stats["served"] >= 1


# -- the options ------------------------------------------------------------------------------


async def insert_note(session: AsyncSession) -> dict[str, str]:
    """Store one note."""
    await session.execute(text("INSERT INTO ryw_notes (body) VALUES ('mine')"))
    return {"stored": "mine"}


async def test_the_cookie_and_header_take_the_options_given(notes_asyncpg: Pair) -> None:
    """Cookie name, header name, max-age, Secure and path are those given; the cookie is
    HttpOnly and SameSite=Lax, and holds the header's tokens."""
    db = Database(notes_asyncpg.primary, replicas=[notes_asyncpg.replica])
    app = app_with(db.session, {"POST /notes": insert_note})
    app.add_middleware(
        ReadYourWrites, cookie_name="w", header_name="X-Writes", max_age=5, secure=True, path="/app"
    )
    async with db, client_for(app) as client:
        response = await client.post("/notes")
    token = response.headers["x-writes"]
    assert response.headers["set-cookie"] == (
        f"w={token}; Max-Age=5; Path=/app; HttpOnly; SameSite=Lax; Secure"
    )
    assert token.split(":")[0].isdigit()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("cookie_name", ""),
        ("cookie_name", "my cookie"),
        ("cookie_name", "a;b"),
        ("header_name", "X Writes"),
        ("header_name", None),
        ("max_age", 0),
        ("max_age", -60),
        ("max_age", 1.5),
        ("max_age", True),
        ("max_age", "60"),
        ("secure", "yes"),
        ("path", "app"),
        ("path", "/a;b"),
        ("path", "/a b"),
    ],
)
def test_an_unusable_option_is_refused_at_construction(option: str, value: object) -> None:
    """A bad name, lifetime, Secure flag or path: ConfigurationError naming the option and
    the value as given, before any request."""
    given: dict[str, Any] = {option: value}  # wrong on purpose, types included
    with pytest.raises(ConfigurationError) as raised:
        ReadYourWrites(FastAPI(), **given)
    assert f"{option}={value!r}" in str(raised.value)


# -- docs/replicas.md: each python block runs ----------------------------------------------

GUIDE = "docs/replicas.md"
REPLICA_1 = "postgresql+asyncpg://app@replica-1/app"
REPLICA_2 = "postgresql+asyncpg://app@replica-2/app"


def port_of(url: str) -> int:
    """The port ``url`` names."""
    return int(make_url(url).port or 5432)


async def fresh(work: Awaitable[T]) -> T:
    """Run ``work`` in a context of its own: a request's or a worker's, with no tokens of
    an earlier test (which ran in this task) in it."""
    return await asyncio.create_task(_awaited(work), context=contextvars.Context())


async def _awaited(work: Awaitable[T]) -> T:
    return await work


async def in_recovery(db: Database) -> bool:
    """Whether a read-only unit of ``db`` ran on a replica."""
    async with db.transaction(read_only=True) as session:
        return bool((await session.execute(text("SELECT pg_is_in_recovery()"))).scalar())


@pytest.fixture
async def guide(notes_asyncpg: Pair) -> AsyncIterator[Pair]:
    """The pair, with the guide's ``notes`` table, replayed."""
    tables = Tables(notes_asyncpg.primary)
    await tables.create("notes", "id serial PRIMARY KEY, body text")
    await wait_for_replay(notes_asyncpg.primary, notes_asyncpg.replica)
    yield notes_asyncpg
    await tables.drop_all()


def guide_db(pair: Pair, *, wait: float = 10.0) -> Database:
    """The guide's first block's Database, on ``pair`` (its one replica named twice)."""
    code = block_containing(GUIDE, "replica_max_lag=")
    replace = {
        REPLICA_1: pair.replica,
        REPLICA_2: pair.replica,
        "replica_wait=0.05": f"replica_wait={wait}",
    }
    db: Database = run_block(code, pair.primary, replace=replace)["db"]
    return db


async def test_the_configured_replicas_serve_reads(guide: Pair) -> None:
    """The configuration block's Database reads on its replicas, both ready."""
    db = guide_db(guide)
    async with db:
        on_replica = await fresh(in_recovery(db))
        states = [replica.state for replica in db.stats().replicas]
    assert on_replica is True
    assert states == ["ready", "ready"]


async def test_a_multi_host_replica_url_finds_the_standby(notes: Pair, replica_driver: str) -> None:
    """The multi-host replica URL, whose first host is the primary, reads on the standby,
    through each driver."""
    primary, replica = make_url(notes.primary), make_url(notes.replica)
    replace = {
        "postgresql+asyncpg://app@/app": f"postgresql+{replica_driver}://postgres@/{DATABASE}",
        "replica-1:5432": f"{primary.host}:{primary.port}",
        "replica-2:5432": f"{replica.host}:{replica.port}",
    }
    code = block_containing(GUIDE, "target_session_attrs=standby")
    namespace = run_block(code, notes.primary, namespace={"Database": Database}, replace=replace)
    db: Database = namespace["db"]
    async with db:
        on_replica = await fresh(in_recovery(db))
        stats = db.stats()
    assert on_replica is True
    assert stats.replicas[0].state == "ready"
    assert stats.replicas[0].served == 1


async def test_a_script_reads_its_own_write_on_the_replica(guide: Pair) -> None:
    """The script's read after its write sees it, served by the replica once it applied
    the write 2 s late."""
    db = guide_db(guide)
    code = block_containing(GUIDE, "VALUES ('hello')")
    namespace: dict[str, Any] = {"db": db, "text": text}
    async with db, apply_delayed(guide.replica, DELAY_MS):
        await fresh(run_async_block(code, namespace))
        stats = db.stats()
    assert namespace["bodies"] == ["hello"]
    assert (stats.replicas[0].served + stats.replicas[1].served, stats.fallbacks) == (1, ())


async def test_the_guide_app_reads_its_note_after_the_redirect(
    guide: Pair, clean_env: pytest.MonkeyPatch
) -> None:
    """The guide's app, configured from the environment and served by uvicorn: POST, 303,
    GET with the cookie sees the note, read on the replica that applies it 2 s late."""
    clean_env.setenv("DATABASE_URL", guide.primary)
    clean_env.setenv("DATABASE_REPLICA_URLS", guide.replica)
    clean_env.setenv("REPLICA_WAIT", "10")
    namespace = run_block(block_containing(GUIDE, "app.add_middleware(ReadYourWrites)\n\n"), "")
    db: Database = namespace["db"]
    async with serving(namespace["app"]) as base_url, browser(base_url) as client:
        async with apply_delayed(guide.replica, DELAY_MS):
            response = await client.post("/notes", params={"body": "hello"})
        stats = db.stats()
    assert response.history[0].status_code == 303
    assert response.json() == {"body": "hello"}
    assert (stats.replicas[0].served, stats.fallbacks) == (1, ())


@pytest.mark.parametrize(
    ("after", "seen"), [("after=token", "hello"), ("after=None", None)], ids=["token", "none"]
)
async def test_a_worker_reads_the_note_its_job_names_with_its_token(
    guide: Pair, after: str, seen: str | None
) -> None:
    """The job carries its write token, and the worker, in a context of its own, reads the
    note on the replica once it applied it; without the token, the same read is stale."""
    db = guide_db(guide)
    code = block_containing(GUIDE, "after=token")
    namespace = run_block(
        code, "", namespace={"db": db, "text": text}, replace={"after=token": after}
    )
    async with db, apply_delayed(guide.replica, DELAY_MS):
        await fresh(namespace["add_note"]("hello"))
        try:
            found: str | None = await fresh(namespace["index_note"]())
        except NoResultFound:
            found = None
        stats = db.stats()
    assert found == seen
    assert (stats.replicas[0].served + stats.replicas[1].served, stats.fallbacks) == (1, ())


async def test_a_report_reads_a_replica_without_waiting_for_earlier_writes(guide: Pair) -> None:
    """With replay paused, a stale_ok read after a write of its context reads the replica
    at once, without the write; the same read without stale_ok falls back to the primary."""
    db = guide_db(guide, wait=0.2)
    code = block_containing(GUIDE, "stale_ok=True) as session")
    namespace: dict[str, Any] = {"db": db, "text": text}

    async def write_then_report() -> None:
        async with db.transaction() as session:
            await session.execute(text("INSERT INTO notes (body) VALUES ('later')"))
        await run_async_block(code, namespace)
        namespace["fallbacks"] = db.stats().fallbacks
        await in_recovery(db)

    async with db, replay_paused(guide.replica):
        await fresh(write_then_report())
        stats = db.stats()
    assert namespace["total"] == 0
    assert namespace["fallbacks"] == ()
    assert stats.replicas[0].served + stats.replicas[1].served == 1
    assert stats.fallbacks == (("behind", 1),)


async def test_the_stats_block_prints_each_replica_and_the_fallbacks(
    guide: Pair, capsys: pytest.CaptureFixture[str]
) -> None:
    """The stats block prints each replica's name, state, lag, reads served and reason,
    then the fallbacks by why."""
    db = guide_db(guide)
    async with db:
        await fresh(in_recovery(db))
        await run_async_block(block_containing(GUIDE, "print(dict(stats.fallbacks))"), {"db": db})
    lines = capsys.readouterr().out.splitlines()
    name = f"127.0.0.1:{port_of(guide.replica)}/{DATABASE}"
    assert len(lines) == 3
    assert {tuple(line.split()[:2]) for line in lines[:2]} == {(name, "ready")}
    assert sorted(line.split(maxsplit=3)[3] for line in lines[:2]) == ["0 None", "1 None"]
    assert lines[2] == "{}"


async def test_two_databases_keep_a_token_each_in_one_cookie(
    guide: Pair, caplog: pytest.LogCaptureFixture
) -> None:
    """The guide's two Databases on two clusters (the pair; the 5432 server, whose replica
    is down): one cookie holds a token of each cluster, the orders read waits for its own
    token only and is served by its replica; stats and logs name each Database."""
    caplog.set_level(logging.INFO, logger="dbscope")
    require_server(POSTGRES_URL)
    asyncpg = make_url(POSTGRES_URL).set(drivername="postgresql+asyncpg")
    other = asyncpg.render_as_string(hide_password=False)
    replace = {
        "postgresql+asyncpg://app@orders-primary/orders": guide.primary,
        "postgresql+asyncpg://app@orders-replica/orders": guide.replica,
        "postgresql+asyncpg://app@accounts-primary/accounts": other,
        "postgresql+asyncpg://app@accounts-replica/accounts": unreachable(other),
        # A read waits for the replica that applies its write 2 s late.
        'pool_name="orders",': 'pool_name="orders", replica_wait=10,',
    }
    namespace = run_block(block_containing(GUIDE, "accounts.lifespan(app)"), "", replace=replace)
    orders, accounts = namespace["orders"], namespace["accounts"]
    orders_tables, accounts_tables = Tables(guide.primary), Tables(other)
    await orders_tables.create("orders", "id serial PRIMARY KEY, item text")
    await accounts_tables.create("accounts", "orders int")
    async with admin(other) as connection:
        await connection.execute(text("INSERT INTO accounts VALUES (0)"))
    await wait_for_replay(guide.primary, guide.replica)
    try:
        async with serving(namespace["app"]) as base_url, browser(base_url) as client:
            async with apply_delayed(guide.replica, DELAY_MS):
                response = await client.post("/orders", params={"item": "book"})
            found = (orders.stats(), accounts.stats())
    finally:
        await orders_tables.drop_all()
        await accounts_tables.drop_all()
    tokens = response.history[0].headers[HEADER].split(",")
    assert response.json() == {"item": "book", "orders_placed": 1}
    assert sorted(token.split(":")[0] for token in tokens) == sorted(
        [await cluster_of(guide.primary), await cluster_of(other)]
    )
    assert response.history[0].cookies[COOKIE] == ".".join(tokens)
    assert (
        found[0].replicas[0].name == f"orders replica 127.0.0.1:{port_of(guide.replica)}/{DATABASE}"
    )
    assert (found[0].replicas[0].served, found[0].fallbacks) == (1, ())
    assert (found[1].replicas[0].state, found[1].fallbacks) == ("down", (("no_replica_ready", 1),))
    assert "of Database 'orders' serves reads" in caplog.text
    assert "of Database 'accounts' serves no reads: it could not be reached" in caplog.text


def unreachable(url: str) -> str:
    """``url`` at a port nothing listens on."""
    return make_url(url).set(port=free_port()).render_as_string(hide_password=False)


async def cluster_of(url: str) -> str:
    """The system identifier of the server at ``url``: its cluster, as tokens name it."""
    async with admin(url) as connection:
        found = await connection.scalar(text("SELECT system_identifier FROM pg_control_system()"))
    return str(found)
