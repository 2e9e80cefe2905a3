"""Read replicas, health: a replica that is down, lagging, promoted or of another cluster
serves no reads, which go to the primary (counted, never an error), and one that recovers
serves again; on a real primary and streaming replica, stopped and paused for real.
"""

import asyncio
import contextlib
import logging
import threading
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from dbscope import Database
from tests.conftest import POSTGRES_URL, require_server
from tests.helpers import run_script
from tests.replica_cluster import ReplicaPair, replay_paused, replica_stopped
from tests.replica_reads import (
    CHECK_INTERVAL,
    add_item,
    another_name,
    fallbacks,
    in_recovery,
    replicated,
    served,
)
from tests.server import free_port

pytest_plugins = ["tests.replica_fixtures"]

# A script whose first event loop is closed without its tasks cancelled (loop.close() after
# run_until_complete, without dispose()), the replicas' watch among them; its next run
# disposes, connects and reads on the replica. Prints that read's recovery state and the
# records at ERROR or above, and whether the next run's dispose() raised.
LOOP_CLOSED_UNDER_THE_WATCH = """
import asyncio, gc, json, logging, sys
from sqlalchemy import text
from dbscope import Database

records = []
handler = logging.Handler(logging.ERROR)
handler.emit = lambda record: records.append([record.name, record.getMessage()])
logging.getLogger().addHandler(handler)
db = Database(sys.argv[1], replicas=[sys.argv[2]])

async def second() -> object:
    try:
        await db.dispose()
    except RuntimeError as error:
        return repr(error)
    await db.connect()
    try:
        async with db.transaction(read_only=True) as session:
            return (await session.execute(text("SELECT pg_is_in_recovery()"))).scalar_one()
    finally:
        await db.dispose()

loop = asyncio.new_event_loop()
loop.run_until_complete(db.connect())
loop.close()
result = asyncio.run(second())
gc.collect()
print(json.dumps([result, records]))
"""

READS = 5
# How long a state change may take to show: many check intervals, for a loaded machine.
WITHIN = 10.0


async def reads_on_replica(db: Database, count: int = READS) -> list[bool]:
    """Run ``count`` read-only units; whether each ran on the replica."""
    found = []
    for _ in range(count):
        async with db.transaction(read_only=True) as session:
            found.append(await in_recovery(session))
    return found


async def until_state(db: Database, state: str, index: int = 0) -> None:
    """Wait until the background check has put replica ``index`` in ``state``."""
    with anyio.fail_after(WITHIN):
        while True:
            if db.stats().replicas[index].state == state:
                return
            await anyio.sleep(0.02)


def logged(caplog: pytest.LogCaptureFixture, words: str) -> int:
    """How many of dbscope's records say ``words``."""
    return sum(words in record.getMessage() for record in caplog.records)


async def test_a_replica_stays_ready_through_its_checks_after_serving_reads(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Checks on connections that served read-only units find the replica ready still
    (psycopg would begin them READ WRITE, which a hot standby refuses)."""
    async with replicated(urls) as db:
        for _ in range(3):
            assert all(await db.parallel(in_recovery, in_recovery, in_recovery))
            await anyio.sleep(10 * CHECK_INTERVAL)
        replica = db.stats().replicas[0]
    assert (replica.state, replica.served) == ("ready", 9)
    assert logged(caplog, "serves no reads") == 0


async def test_a_stopped_replica_sends_the_reads_to_the_primary(
    urls: tuple[str, str], replica_pair: ReplicaPair, caplog: pytest.LogCaptureFixture
) -> None:
    """The replica's server stopped: reads run on the primary, counted, none fails; the
    replica shows down, and the warning is logged once."""
    caplog.set_level(logging.INFO, logger="dbscope")
    async with replicated(urls) as db, replica_stopped(replica_pair):
        ran_on_replica = await reads_on_replica(db)
        await until_state(db, "down")
        await anyio.sleep(0.5)  # a few checks more, which must not log again
        ran_on_replica += await reads_on_replica(db)
        replica = db.stats().replicas[0]
        counted = fallbacks(db)
        health = (await db.health()).to_dict()["checks"]["replica:lag"][0]
    assert not any(ran_on_replica)
    assert sum(counted.values()) == 2 * READS
    assert replica.state == "down"
    assert replica.reason == "it could not be reached"
    assert replica.lag is None  # not the 0 of its last check while it served
    assert "observedValue" not in health
    assert replica.served == 0
    assert logged(caplog, "serves no reads: it could not be reached") == 1


async def test_a_replica_started_again_serves_reads_within_a_few_checks(
    urls: tuple[str, str], replica_pair: ReplicaPair, caplog: pytest.LogCaptureFixture
) -> None:
    """Once its server is back and streaming, the replica is ready again and serves."""
    caplog.set_level(logging.INFO, logger="dbscope")
    async with replicated(urls) as db:
        async with replica_stopped(replica_pair):
            assert not any(await reads_on_replica(db))
            await until_state(db, "down")
        await until_state(db, "ready")
        assert all(await reads_on_replica(db))
        assert served(db) == READS
    assert logged(caplog, "serves reads") == 2  # at connect(), and back


async def test_a_replica_down_at_connect_serves_once_it_is_up(
    urls: tuple[str, str], replica_pair: ReplicaPair
) -> None:
    """connect() does not fail for a replica that is down; the replica serves once it is up."""
    async with contextlib.AsyncExitStack() as stack:
        async with replica_stopped(replica_pair):
            db = await stack.enter_async_context(replicated(urls))
            assert db.stats().replicas[0].state == "down"
            assert not any(await reads_on_replica(db))
        await until_state(db, "ready")
        assert all(await reads_on_replica(db))
        assert fallbacks(db) == {"no_replica_ready": READS}


async def test_a_replica_further_behind_than_replica_max_lag_serves_no_reads(
    urls: tuple[str, str],
) -> None:
    """Replay paused while writes go on: more than replica_max_lag behind, the replica is
    lagging, and reads (stale_ok ones too) run on the primary."""
    async with replicated(urls, replica_max_lag="1kB") as db, replay_paused(urls[1]):
        for item in range(20):
            await add_item(db, item)
        await until_state(db, "lagging")
        async with db.transaction(read_only=True, stale_ok=True) as session:
            assert not await in_recovery(session)
        replica = db.stats().replicas[0]
        counted = fallbacks(db)
    assert replica.lag is not None
    assert replica.lag > 1000
    assert replica.reason == f"{replica.lag} bytes behind, more than replica_max_lag=1000"
    assert replica.served == 0
    assert counted == {"no_replica_ready": 1}


async def test_the_primary_named_as_a_replica_is_promoted_and_never_read(
    urls: tuple[str, str],
) -> None:
    """A 'replica' that is not in recovery is promoted; the real replica beside it serves. Not
    in recovery from its first check, it is said to be a primary from the start (before: 'no
    longer in recovery', as after a failover)."""
    primary, replica = urls
    async with Database(primary, replicas=[another_name(primary), replica]) as db:
        ran_on_replica = await reads_on_replica(db)
        promoted, ready = db.stats().replicas
    assert all(ran_on_replica)
    assert (promoted.state, promoted.served, promoted.lag) == ("promoted", 0, None)
    assert (promoted.reason or "").startswith("it is a primary of this cluster, not in recovery")
    assert (ready.state, ready.served) == ("ready", READS)


async def test_a_replica_of_another_cluster_is_foreign_and_never_read(
    urls: tuple[str, str],
) -> None:
    """A server in recovery that replicates another cluster than the primary's is foreign:
    the reads run on the primary."""
    other = make_url(POSTGRES_URL).set(drivername=make_url(urls[0]).drivername)
    require_server(other.render_as_string(hide_password=False))
    async with Database(other, replicas=[urls[1]]) as db:
        ran_on_replica = await reads_on_replica(db)
        async with db.transaction(read_only=True) as session:
            database = await session.scalar(text("SELECT current_database()"))
        replica = db.stats().replicas[0]
    assert not any(ran_on_replica)
    assert database == other.database
    assert (replica.state, replica.served) == ("foreign", 0)
    assert replica.reason == "it replicates another cluster than the primary's"


async def test_a_replica_whose_pool_is_busy_with_reads_stays_ready(urls: tuple[str, str]) -> None:
    """Every replica connection held by a long read for longer than a check's time bound:
    the checks, which do not wait in the replica's pool, find it ready still, and the next
    read runs on it."""
    async with replicated(urls, pool_size=2, max_overflow=0) as db:

        async def long_read() -> bool:
            async with db.transaction(read_only=True) as session:
                on_replica = await in_recovery(session)
                await session.execute(text("SELECT pg_sleep(2.5)"))
                return on_replica

        reads = asyncio.gather(long_read(), long_read())
        states, busiest = set(), 0
        while not reads.done():
            replica = db.stats().replicas[0]
            states.add(replica.state)
            busiest = max(busiest, replica.pool.checked_out if replica.pool else 0)
            await anyio.sleep(0.05)
        held = await reads
        ran_on_replica = await reads_on_replica(db, 1)
        after = db.stats().replicas[0]
    assert list(held) == [True, True]
    assert busiest == 2
    assert states == {"ready"}
    assert ran_on_replica == [True]
    assert (after.state, after.served) == ("ready", 3)


async def test_a_replica_that_refuses_the_connection_says_why_once(
    urls: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A replica URL naming a database the replica has not: the log says why (the refusal's
    own message), once over many checks; no lag is reported."""
    primary, replica = urls
    wrong = make_url(replica).set(database="no_such_database").render_as_string(False)
    reason = 'database "no_such_database" does not exist (check the user, password and'
    async with Database(primary, replicas=[wrong], replica_check_interval=CHECK_INTERVAL) as db:
        await anyio.sleep(30 * CHECK_INTERVAL)  # past several back-offs
        stats = db.stats().replicas[0]
        health = (await db.health()).to_dict()["checks"]["replica:lag"][0]
    assert stats.state == "down"
    assert reason in (stats.reason or "")
    assert stats.lag is None
    assert "observedValue" not in health
    assert logged(caplog, f"serves no reads: {stats.reason}") == 1
    assert logged(caplog, "serves no reads") == 1


async def test_the_patroni_client_is_made_off_the_event_loop(
    urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect() makes its one httpx client (an SSL context from the CA bundle, 24 ms of
    CPU) in a thread, not the loop's."""
    made_in = []
    init = httpx.AsyncClient.__init__

    def recorded(client: httpx.AsyncClient, **options: Any) -> None:
        made_in.append(threading.get_ident())
        init(client, **options)

    monkeypatch.setattr(httpx.AsyncClient, "__init__", recorded)
    db = Database(
        urls[0],
        replicas=[urls[1]],
        replica_patroni_urls=[f"http://127.0.0.1:{free_port()}"],
    )
    async with db:
        pass
    assert len(made_in) == 1
    assert made_in[0] != threading.get_ident()


async def test_a_member_patroni_turns_down_that_is_no_replica_shows_promoted(
    urls: tuple[str, str],
) -> None:
    """A 'replica' not in recovery whose Patroni check fails too (the leader after a
    failover) shows what it is, promoted, not down (unreachable)."""
    primary = urls[0]
    db = Database(
        primary,
        replicas=[another_name(primary)],
        replica_patroni_urls=[f"http://127.0.0.1:{free_port()}"],
    )
    async with db:
        promoted = db.stats().replicas[0]
    assert (promoted.state, promoted.lag) == ("promoted", None)
    assert (promoted.reason or "").startswith("it is a primary of this cluster, not in recovery")


async def test_a_watch_whose_event_loop_closed_unfinished_is_let_go_by_dispose(
    urls: tuple[str, str],
) -> None:
    """The loop that connected was closed with the replicas' watch still pending: the next
    loop's dispose() lets go of it and reads on the replica again, with nothing at ERROR
    (before: cancelling it asked the closed loop, and dispose() raised "Event loop is
    closed", the pools left open; asyncio then logged the watch destroyed pending)."""
    found = await anyio.to_thread.run_sync(run_script, LOOP_CLOSED_UNDER_THE_WATCH, *urls)
    assert found == [True, []]
