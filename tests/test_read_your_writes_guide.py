"""docs/replicas.md, each python block run on a real primary and its streaming replica
(tests/replica_cluster.py), in the read-your-writes tests' own database: the configured
replicas, a multi-host replica URL, a script, the guide's app and a worker reading their own
writes, a report that does not wait for them, the stats block, and two Databases keeping a
token each in one cookie.

Stale reads are made for real: the replica applies each commit late
(``recovery_min_apply_delay``) or its replay is paused. Each test reads ``db.stats()`` to
show which reads the replicas served and which fell back to the primary. Read-your-writes
across requests, with the middleware: tests/test_read_your_writes.py.
"""

import asyncio
import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import NoResultFound

from dbscope import Database
from tests.conftest import POSTGRES_URL, require_server
from tests.documented import block_containing, run_async_block, run_block, serving
from tests.helpers import Tables, admin
from tests.read_your_writes_pair import COOKIE, DATABASE, DELAY_MS, HEADER, Pair, browser
from tests.replica_cluster import apply_delayed, replay_paused, wait_for_replay
from tests.server import free_port

pytest_plugins = ["tests.read_your_writes_fixtures"]

T = TypeVar("T")


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
