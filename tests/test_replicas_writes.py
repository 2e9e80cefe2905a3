"""Read replicas, read-your-writes in scripts and workers: a read after a write sees it, on
the replica once it has replayed the write, else on the primary; by WAL position, on a real
primary and streaming replica whose replay is paused or delayed for real.
"""

import asyncio
import contextvars
import logging
import time
from collections.abc import Awaitable, Callable

import anyio
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import ConfigurationError, Database, PoolStats
from dbscope._unit_options import IsolationLevel
from tests.conftest import POSTGRES_URL, require_server
from tests.helpers import admin
from tests.replica_cluster import apply_delayed, replay_paused, wait_for_replay
from tests.replica_reads import (
    TABLE,
    add_item,
    another_name,
    capture_allowed,
    capture_refused,
    fallbacks,
    on_replica_and_sees,
    replicated,
    served,
)

pytest_plugins = ["tests.replica_fixtures"]

# Write-then-read pairs with the replica applying each commit late.
PAIRS = 24
APPLY_DELAY_MS = 300
# The longest a pair waits between its write and its read: past the delay, so that the
# later reads find the write replayed.
LONGEST_GAP = 0.6
# Commits written until one ends a WAL page (about 1 in 1000 does), and where the insert
# position then is: past the next page's short header.
PAGE_END_TRIES = 20_000
PAGE_HEADER = 24


async def read(
    db: Database,
    item: int,
    *,
    after: str | None = None,
    stale_ok: bool = False,
    isolation_level: IsolationLevel | None = None,
) -> tuple[bool, bool]:
    """A read-only unit of ``db``: whether it ran on the replica, and whether it saw ``item``."""
    async with db.transaction(
        read_only=True, after=after, stale_ok=stale_ok, isolation_level=isolation_level
    ) as session:
        return await on_replica_and_sees(session, item)


async def test_a_read_after_a_write_reads_the_primary_while_the_replica_is_behind(
    urls: tuple[str, str],
) -> None:
    """With replay paused, the read that follows a write runs on the primary and sees it."""
    async with replicated(urls) as db, replay_paused(urls[1]):
        await add_item(db, 1)
        assert await read(db, 1) == (False, True)
        assert fallbacks(db) == {"behind": 1}
        assert served(db) == 0


async def add_item_replayed_late(db: Database, urls: tuple[str, str]) -> None:
    """Write item 1 while the replica's replay is paused; return once it has replayed it."""
    async with replay_paused(urls[1]):
        await add_item(db, 1)
    await wait_for_replay(*urls)


async def test_the_same_read_runs_on_the_replica_once_it_has_replayed_the_write(
    urls: tuple[str, str],
) -> None:
    """Once replay resumes and reaches the write, the read after it is the replica's."""
    async with replicated(urls) as db:
        await add_item_replayed_late(db, urls)
        assert await read(db, 1) == (True, True)
        assert served(db) == 1
        assert fallbacks(db) == {}


async def worker(urls: tuple[str, str], token: str | None) -> tuple[bool, bool]:
    """A worker of its own (another Database, another context) reading item 1 after
    ``token``: where it ran, and whether it saw the item."""
    async with replicated(urls) as db:
        return await read(db, 1, after=token)


async def in_worker(urls: tuple[str, str], token: str | None) -> tuple[bool, bool]:
    """:func:`worker`, run in a task with an empty context: no write of the caller's known."""
    return await asyncio.create_task(worker(urls, token), context=contextvars.Context())


async def test_a_worker_given_the_write_token_reads_the_write(urls: tuple[str, str]) -> None:
    """A job carrying db.write_token() reads the write on the primary while the replica is
    behind; the same job without the token reads the stale replica."""
    async with replicated(urls) as db, replay_paused(urls[1]):
        await add_item(db, 1)
        token = db.write_token()
        assert token is not None
        assert await in_worker(urls, token) == (False, True)
        assert await in_worker(urls, None) == (True, False)


async def test_a_worker_given_the_write_token_reads_the_replica_once_it_has_the_write(
    urls: tuple[str, str],
) -> None:
    """A job carrying the token reads the replica once it has replayed the write."""
    async with replicated(urls) as db:
        await add_item_replayed_late(db, urls)
        token = db.write_token()
        assert await in_worker(urls, token) == (True, True)


async def test_a_given_token_does_not_hide_the_writes_of_the_context(
    urls: tuple[str, str],
) -> None:
    """A read with an older token still sees the writes its own context made since."""
    async with replicated(urls) as db:
        await add_item(db, 1)
        older = db.write_token()
        await wait_for_replay(*urls)
        async with replay_paused(urls[1]):
            await add_item(db, 2)
            assert await read(db, 2, after=older) == (False, True)
            assert fallbacks(db) == {"behind": 1}


async def test_a_read_cancelled_while_it_waits_for_the_replica_returns_its_connection(
    urls: tuple[str, str],
) -> None:
    """A read waiting for the replica to replay a write, cancelled (a client gone): its
    replica connection is back in the pool at once, not left to the garbage collector."""
    # No check after connect()'s: a check takes its connection from the replica's pool too,
    # so one under way (opening a connection, slow on a loaded machine) was counted as the
    # read's, before the cancel and after it.
    options = {"replica_wait": 10.0, "replica_check_interval": 3600}
    async with replicated(urls, **options) as db, replay_paused(urls[1]):
        await add_item(db, 1)
        waiting = asyncio.create_task(read(db, 1))
        with anyio.fail_after(10):
            while True:  # until the read has its replica connection, and waits
                if replica_pool(db).checked_out == 1:
                    break
                await anyio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert replica_pool(db).checked_out == 0
        assert served(db) == 0


def replica_pool(db: Database) -> PoolStats:
    """The replica's pool numbers now."""
    pool = db.stats().replicas[0].pool
    assert pool is not None
    return pool


def inserting(item: int) -> Callable[[AsyncSession], Awaitable[None]]:
    """A query for parallel(): it writes the item ``item``."""

    async def insert(session: AsyncSession) -> None:
        await session.execute(text(f"INSERT INTO {TABLE} (id) VALUES ({item})"))

    return insert


async def test_writes_in_parallel_units_are_seen_by_the_read_after_them(
    urls: tuple[str, str],
) -> None:
    """parallel(read_only=False) runs each unit in a task of its own: their writes' tokens
    still reach the caller, whose next read sees them."""
    async with replicated(urls) as db, replay_paused(urls[1]):
        await db.parallel(inserting(1), inserting(2), read_only=False)
        assert db.write_token() is not None
        assert await read(db, 2) == (False, True)
        assert fallbacks(db) == {"behind": 1}


async def test_stale_ok_reads_the_replica_without_the_write(urls: tuple[str, str]) -> None:
    """stale_ok=True reads the replica at once, stale on purpose: the write is not there."""
    async with replicated(urls) as db, replay_paused(urls[1]):
        await add_item(db, 1)
        assert await read(db, 1, stale_ok=True) == (True, False)
        assert served(db) == 1
        assert fallbacks(db) == {}


async def test_a_token_of_another_cluster_is_ignored(urls: tuple[str, str]) -> None:
    """A token from a Database on another server (its own cluster) says nothing of the
    pair's log: the read runs on the replica, without waiting."""
    other_url = make_url(POSTGRES_URL).set(drivername=make_url(urls[0]).drivername)
    require_server(other_url.render_as_string(hide_password=False))
    async with Database(other_url, replicas=[another_name(other_url)]) as other:
        async with other.transaction() as session:
            await session.execute(text("SELECT 1"))
        other_token = other.write_token()
    assert other_token is not None
    # Its position set past anything the pair wrote: only its cluster can make it ignored.
    cluster = other_token.partition(":")[0]
    assert cluster != await _cluster(urls[0])
    async with replicated(urls) as db:
        assert await read(db, 1, after=f"{cluster}:{1 << 62:X}") == (True, False)
        assert fallbacks(db) == {}


async def _cluster(url: str) -> str:
    async with admin(url) as connection:
        query = text("SELECT system_identifier::text FROM pg_control_system()")
        return str(await connection.scalar(query))


@pytest.mark.parametrize("garbled", ["nonsense", "123:not-hex", "", "7715623584701374171", 42])
async def test_a_garbled_token_is_refused_naming_it(urls: tuple[str, str], garbled: object) -> None:
    """after= that is not a write token is a ConfigurationError naming the value as given."""
    async with replicated(urls) as db:
        with pytest.raises(ConfigurationError) as raised:
            async with db.transaction(read_only=True, after=garbled):  # type: ignore[arg-type]
                pass
    assert f"after={garbled!r} is not a write token" in str(raised.value)
    assert "db.write_token()" in str(raised.value)


async def test_a_repeatable_read_unit_with_a_token_reads_the_primary(
    urls: tuple[str, str],
) -> None:
    """REPEATABLE READ takes its snapshot with the first statement: a read that must see a
    write runs on the primary, where the snapshot surely has it."""
    async with replicated(urls) as db, replay_paused(urls[1]):
        await add_item(db, 1)
        assert await read(db, 1, isolation_level="REPEATABLE READ") == (False, True)
        assert fallbacks(db) == {"isolation_level": 1}


async def test_no_read_after_a_write_is_stale_with_commits_applied_late(
    urls: tuple[str, str],
) -> None:
    """With each commit applied 300 ms late on the replica, no read after a write misses it,
    at any gap between the two; the later reads are the replica's."""
    stale = stale_on_purpose = on_replica = 0
    async with replicated(urls) as db, apply_delayed(urls[1], APPLY_DELAY_MS):
        for item in range(PAIRS):
            await add_item(db, item)
            stale_on_purpose += not (await read(db, item, stale_ok=True))[1]
            await asyncio.sleep(LONGEST_GAP * item / PAIRS)
            ran_on_replica, seen = await read(db, item)
            stale += not seen
            on_replica += ran_on_replica
        assert served(db) == on_replica + PAIRS  # the stale_ok reads too
    print(
        f"\n{make_url(urls[0]).drivername}: {PAIRS} write-then-read pairs, commits applied "
        f"{APPLY_DELAY_MS} ms late: {stale} stale, {on_replica} read on the replica; "
        f"{stale_on_purpose} of the stale_ok reads at once missed the write"
    )
    assert stale == 0
    assert on_replica >= PAIRS // 4
    assert stale_on_purpose >= PAIRS // 2


async def test_a_write_that_ends_a_wal_page_is_read_on_the_replica(
    urls: tuple[str, str],
) -> None:
    """A commit whose record ends a WAL page exactly (about 1 in 1000): the read after it is
    the replica's, which stops at the page's end, not past the next page's header."""
    async with admin(urls[0]) as connection:
        page = int(await connection.scalar(text("SELECT current_setting('wal_block_size')")))
    async with replicated(urls) as db:
        for item in range(PAGE_END_TRIES):
            await add_item(db, item)
            token = db.write_token()
            assert token is not None
            if int(token.partition(":")[2], 16) % page in (0, PAGE_HEADER):
                break
        else:
            pytest.fail(f"none of {PAGE_END_TRIES} commits ended a WAL page")
        assert await read(db, item) == (True, True)
        assert fallbacks(db) == {}


async def write_then_fail(db: Database, *, commit: bool) -> None:
    """A unit that writes item 1, commits it if ``commit``, then raises RuntimeError."""
    async with db.transaction() as session:
        await session.execute(text(f"INSERT INTO {TABLE} (id) VALUES (1)"))
        if commit:
            await session.commit()
        raise RuntimeError("the unit failed")


async def test_a_unit_that_rolls_back_adds_no_token(urls: tuple[str, str]) -> None:
    """A write rolled back leaves no token: the next read is the replica's, replay paused."""
    async with replicated(urls) as db, replay_paused(urls[1]):
        with pytest.raises(RuntimeError):
            await write_then_fail(db, commit=False)
        assert db.write_token() is None
        assert await read(db, 1) == (True, False)


async def test_a_commit_mid_unit_adds_a_token(urls: tuple[str, str]) -> None:
    """session.commit() inside a unit that fails later still leaves the write's token, so
    the read after it sees the write."""
    async with replicated(urls) as db, replay_paused(urls[1]):
        with pytest.raises(RuntimeError):
            await write_then_fail(db, commit=True)
        assert db.write_token() is not None
        assert await read(db, 1) == (False, True)
        assert fallbacks(db) == {"behind": 1}


async def test_a_write_whose_position_cannot_be_read_sends_the_reads_after_it_to_the_primary(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The primary refuses the position query (its function revoked from the app's role):
    a warning, and the reads after the write run on the primary, without waiting for the
    replica (which has it all, but cannot say so)."""
    wait = 10.0
    async with (
        capture_refused(urls) as role_urls,
        replicated(role_urls, replica_wait=wait) as db,
    ):
        await add_item(db, 1)
        await wait_for_replay(*urls)
        started = time.monotonic()
        assert await read(db, 1) == (False, True)
        assert await read(db, 1) == (False, True)
        elapsed = time.monotonic() - started
        assert fallbacks(db) == {"behind": 2}
    warnings = [r for r in caplog.records if "Could not read the primary's log" in r.message]
    assert len(warnings) == 1
    assert elapsed < wait / 2


async def test_a_write_whose_position_is_read_frees_the_reads_after_an_unknown_one(
    urls: tuple[str, str],
) -> None:
    """After a write whose position could not be read, the next write whose position is read
    is later than it, and stands for both: the read after it runs on the replica once that
    has replayed it (before: the unknown position stayed the context's token for good, and
    every later read ran on the primary)."""
    async with capture_refused(urls) as role_urls, replicated(role_urls, replica_wait=10) as db:
        await add_item(db, 1)
        await capture_allowed(urls[0])
        await add_item(db, 2)
        await wait_for_replay(*urls)
        assert await read(db, 1) == (True, True)
        assert fallbacks(db) == {}


async def test_the_first_view_of_the_primary_breaks_no_checkin_under_way(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Writes commit side by side, each checkin reading the primary's position (an await in
    the pool's reset); meanwhile the first read-only unit on the primary (SERIALIZABLE, which
    a standby refuses) builds its view of the engine. No checkin fails for it (before: the
    view added a reset listener mid-iteration, 'deque mutated during iteration', each
    connection being checked in invalidated)."""
    stop = asyncio.Event()
    written = 0

    async def write(db: Database) -> None:
        nonlocal written
        while not stop.is_set():
            written += 1
            await add_item(db, 1000 + written)

    async with replicated(urls, pool_size=8, max_overflow=0) as db:
        writers = [asyncio.create_task(write(db)) for _ in range(7)]
        await asyncio.sleep(0.3)
        async with db.transaction(read_only=True, isolation_level="SERIALIZABLE") as session:
            await session.execute(text("SELECT 1"))
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*writers)
        invalidated = db.stats().invalidated
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == []
    assert invalidated == 0
    assert written > 7
