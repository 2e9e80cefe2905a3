"""Pool metrics read back through the real OpenTelemetry SDK (an in-memory reader).

The pool is exhausted for real (units hold every connection while others queue), timeouts
are real 503s from an app served by uvicorn, and every figure is compared with what the pool
itself says (``db.stats()``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession

import dbscope._otel_reporter
import dbscope.otel
from dbscope import Database, DatabaseUnavailableError
from tests import helpers
from tests.documented import serving
from tests.helpers import app_with
from tests.otel_readings import POOL_NAME, Holders, Metered, metered, turned_away

ONE_CONNECTION: dict[str, Any] = {"pool_size": 1, "max_overflow": 0}
SHORT_WAIT: dict[str, Any] = {**ONE_CONNECTION, "pool_timeout": 0.3}


@pytest.fixture
def sdk() -> Iterator[Metered]:
    """A real SDK MeterProvider with an in-memory reader."""
    with metered() as found:
        yield found


async def test_connection_counts_by_state_are_what_db_stats_says(
    database_url: str, sdk: Metered
) -> None:
    """While two units hold connections, used and idle are db.stats()'s checked_out/in."""
    async with Database(database_url, pool_size=3) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        holders = Holders(db)
        await holders.hold(2)
        stats, readings = db.stats(), sdk.read()
        await holders.finish()
        after, readings_after = db.stats(), sdk.read()
    assert readings.connections(db.name) == (stats.checked_in, stats.checked_out)
    assert stats.checked_out == 2
    assert readings_after.connections(db.name) == (after.checked_in, 0)


async def test_a_saturated_pool_reports_its_pending_requests(
    database_url: str, sdk: Metered
) -> None:
    """With the one connection held and three units in line, pending_requests is 3, then 0."""
    async with Database(database_url, pool_timeout=30, **ONE_CONNECTION) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        holders = Holders(db)
        await holders.hold(1)
        await holders.queue(3)
        saturated = sdk.read()
        await holders.finish()
        drained = sdk.read()
    pending = "db.client.connection.pending_requests"
    assert saturated.value(pending, db.name) == 3
    assert saturated.connections(db.name) == (0, 1)
    assert drained.value(pending, db.name) == 0


async def test_one_503_for_pool_timeout_counts_exactly_one_timeout(
    database_url: str, sdk: Metered
) -> None:
    """Over HTTP: a request that waits out pool_timeout gets 503 and timeouts goes 0 to 1."""
    db = Database(database_url, **SHORT_WAIT)
    dbscope.otel.instrument(db, meter_provider=sdk.provider)
    release = asyncio.Event()
    holding = asyncio.Event()

    async def hold(session: AsyncSession) -> dict[str, str]:
        await session.execute(text("SELECT 1"))
        holding.set()
        await release.wait()
        return {"status": "held"}

    async def query(session: AsyncSession) -> dict[str, int]:
        return {"value": int((await session.execute(text("SELECT 1"))).scalar_one())}

    app = app_with(db.session, {"GET /hold": hold, "GET /query": query}, lifespan=db.lifespan)
    async with serving(app) as url, httpx.AsyncClient(base_url=url) as client:
        before = sdk.read().value("db.client.connection.timeouts", db.name)
        held = asyncio.ensure_future(client.get("/hold"))
        with anyio.fail_after(10):
            await holding.wait()
        refused = await client.get("/query")
        after = sdk.read().value("db.client.connection.timeouts", db.name)
        release.set()
        assert (await held).status_code == 200
        assert (await client.get("/query")).status_code == 200
        final = sdk.read().value("db.client.connection.timeouts", db.name)
    assert refused.status_code == 503
    assert (before, after, final) == (0, 1, 1)


async def test_the_durations_are_histograms_in_seconds(sqlite_url: str, sdk: Metered) -> None:
    """wait, use and create times are histograms with unit s, and a 0.2 s use reads ~0.2."""
    async with Database(sqlite_url, pool_size=2) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        # Read-only: on SQLite the second of two units that may write waits for the first.
        reading = db.transaction(read_only=True)
        async with reading as first, db.transaction(read_only=True) as second:
            await first.execute(text("SELECT 1"))
            await second.execute(text("SELECT 1"))  # a second connection: opened now
            await asyncio.sleep(0.2)
        readings = sdk.read()
    names = ("wait_time", "use_time", "create_time")
    units = {name: readings.metrics[f"db.client.connection.{name}"].unit for name in names}
    use = readings.histogram("db.client.connection.use_time", db.name)
    wait = readings.histogram("db.client.connection.wait_time", db.name)
    create = readings.histogram("db.client.connection.create_time", db.name)
    assert units == dict.fromkeys(names, "s")
    assert use.count == 2
    assert 0.4 <= use.sum < 5  # two uses of 0.2 s and a little, in seconds (not ms)
    assert wait.count == 2
    assert wait.sum < 1
    assert create.count == 1
    assert 0 < create.sum < 1


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg", "asyncmy"])
async def test_a_checkout_that_replaces_a_dead_connection_waited_for_the_new_one(
    database_url: str, sdk: Metered
) -> None:
    """The server ends the pooled connection; the next checkout pings it, finds it dead and
    opens another: that opening is part of the checkout's wait (before, the wait ended before
    the ping, and the incident's checkouts read as no wait at all). Each wait holds its own
    opening, so the waits add up to the openings at least."""
    async with Database(database_url, pool_size=1, pool_pre_ping_after=0) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        async with db.transaction() as session:
            backend = await _server_id(session)
        async with helpers.admin(database_url) as connection:
            await helpers.kill(connection, backend)
        async with db.transaction() as session:
            replaced = await _server_id(session)
        readings, stats = sdk.read(), db.stats()
    wait = readings.histogram("db.client.connection.wait_time", db.name)
    create = readings.histogram("db.client.connection.create_time", db.name)
    assert replaced != backend
    assert (stats.pinged, stats.invalidated) == (2, 1)  # the first: connect()'s, idle since
    assert (wait.count, create.count) == (2, 1)
    assert wait.sum >= create.sum


async def test_a_test_bound_to_a_connection_of_the_apps_engine_keeps_its_durations(
    database_url: str, sdk: Metered
) -> None:
    """bind_to() a connection of the Database's own engine counts the pool apart for the
    block; after it, each checkout's wait and use are measured as before (before: the
    block's end detached the pool's observer for good)."""
    wait_time, use_time = "db.client.connection.wait_time", "db.client.connection.use_time"
    async with Database(database_url) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        async with db.engine.connect() as connection:
            with db.bind_to(connection):
                async with db.transaction() as session:
                    await session.execute(text("SELECT 1"))
        before = sdk.read()
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        after = sdk.read()
    counts = [
        (reading.histogram(wait_time, db.name).count, reading.histogram(use_time, db.name).count)
        for reading in (before, after)
    ]
    assert counts[1] == (counts[0][0] + 1, counts[0][1] + 1)


async def test_every_measurement_carries_the_pool_name(database_url: str, sdk: Metered) -> None:
    """Each data point of every metric names the pool; pool_name= sets that name."""
    async with Database(database_url, pool_name="primary") as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        readings = sdk.read()
    names = {
        name: {dict(point.attributes or {}).get(POOL_NAME) for point in readings.points(name)}
        for name in readings.metrics
    }
    assert len(names) == 14  # all but create_time: connect() opened the only connection
    assert all(found == {"primary"} for found in names.values()), names


async def test_metrics_follow_the_database_across_dispose_and_connect(
    database_url: str, sdk: Metered
) -> None:
    """Instrumented before connect(): counts drop to 0 while disposed; counters carry on."""
    db = Database(database_url, **SHORT_WAIT)
    dbscope.otel.instrument(db, meter_provider=sdk.provider)
    readings = []
    for _ in range(2):
        async with db:
            assert (await turned_away(db)).cause == "pool_timeout"
        readings.append(sdk.read())
    first, second = readings
    wait_time = "db.client.connection.wait_time"
    assert first.connections(db.name) == (0, 0)
    assert first.value("db.client.connection.timeouts", db.name) == 1
    assert second.value("db.client.connection.timeouts", db.name) == 2
    assert (
        second.histogram(wait_time, db.name).count == 2 * first.histogram(wait_time, db.name).count
    )


async def test_a_database_instrumented_while_connected_reports_its_running_pool(
    sqlite_url: str, sdk: Metered
) -> None:
    """instrument() after connect() sees the connections already open, and what follows."""
    async with Database(sqlite_url, pool_size=2) as db:
        holders = Holders(db)
        await holders.hold(1)
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        readings = sdk.read()
        await holders.finish()
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
        later = sdk.read()
    assert readings.connections(db.name) == (0, 1)
    assert readings.value("db.client.connection.max", db.name) == 2 + 10
    assert readings.value("db.client.connection.idle.max", db.name) == 2
    assert later.histogram("db.client.connection.wait_time", db.name).count == 1


async def test_a_full_line_counts_a_refusal_and_no_timeout(database_url: str, sdk: Metered) -> None:
    """pool_max_waiters=0 and the connection held: one refusal, as db.stats() counts it."""
    async with Database(database_url, pool_max_waiters=0, **ONE_CONNECTION) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        refusal = await turned_away(db)
        stats, readings = db.stats(), sdk.read()
    assert "pool_max_waiters=0" in str(refusal)
    assert readings.value("dbscope.pool.refusals", db.name) == stats.refused == 1
    assert readings.value("db.client.connection.timeouts", db.name) == stats.timeouts == 0


async def test_invalidated_connections_and_pings_are_counted(
    database_url: str, sdk: Metered
) -> None:
    """A connection invalidated in a unit counts once; pings at every use are counted."""
    options: dict[str, Any] = {"pool_pre_ping": True, "pool_pre_ping_after": 0}
    async with Database(database_url, **options, **ONE_CONNECTION) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        async with db.transaction(read_only=True) as session:  # rolled back, not committed
            connection = await session.connection()
            await connection.invalidate()
        for _ in range(3):
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
        stats, readings = db.stats(), sdk.read()
    assert readings.value("dbscope.pool.invalidations", db.name) == stats.invalidated == 1
    assert readings.value("dbscope.pool.pings", db.name) == stats.pinged
    # connect()'s connection pinged at its first use; its replacement is fresh at its first
    # use, then pinged twice.
    assert stats.pinged == 3


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg", "asyncmy"])
async def test_connections_replaced_after_one_was_lost_each_count_as_invalidated(
    database_url: str, sdk: Metered
) -> None:
    """The server ends a connection in use: SQLAlchemy then replaces every connection opened
    before it at its next checkout, healthy or not. Each replaced connection counts once, as
    many as were opened again (before: only the lost one, 1 where 3 were replaced)."""
    async with Database(database_url, pool_size=3, max_overflow=0) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        holders = Holders(db)
        await holders.hold(3)  # three connections open, then idle
        await holders.finish()
        opened: list[object] = []
        event.listen(db.engine.sync_engine, "connect", lambda *_: opened.append(None))
        with pytest.raises(DatabaseUnavailableError) as lost:
            await _unit_whose_backend_ends(db, database_url)
        holders = Holders(db)
        await holders.hold(3)  # each of the three checked out again
        await holders.finish()
        stats, readings = db.stats(), sdk.read()
    assert lost.value.cause == "connection_lost"
    assert len(opened) == 3
    assert readings.value("dbscope.pool.invalidations", db.name) == stats.invalidated == 3


async def _server_id(session: AsyncSession) -> int:
    """The server's id of the session's connection (PostgreSQL's backend, MariaDB's thread)."""
    query = helpers.BACKEND_ID[session.get_bind().dialect.name]
    return int((await session.execute(text(query))).scalar_one())


async def _unit_whose_backend_ends(db: Database, database_url: str) -> None:
    """A unit of work whose server connection is ended while it runs."""
    async with db.transaction() as session:
        backend = await _server_id(session)
        async with helpers.admin(database_url) as connection:
            await helpers.kill(connection, backend)
        await session.execute(text("SELECT 1"))


async def test_a_retried_conflict_counts_one_retry(postgres_url: str, sdk: Metered) -> None:
    """A serialization failure raised by the server once: dbscope.unit.retries reads 1."""
    failure = (
        "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = 'serialization_failure'; END $$"
    )
    async with Database(postgres_url) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        attempts = db.retrying(backoff=0)
        async for attempt in attempts:
            async with attempt as session:
                await session.execute(text(failure if attempt.number == 1 else "SELECT 1"))
        readings = sdk.read()
    assert readings.value("dbscope.unit.retries", db.name) == attempts.retries == 1


@pytest.mark.parametrize("db_backend", ["asyncpg", "psycopg"])
async def test_a_read_that_lost_its_connection_before_its_first_statement_counts_one_reread(
    database_url: str, sdk: Metered
) -> None:
    """The backend of a read-only unit's connection ends after its checkout: the read runs
    again on a new connection, and dbscope.unit.rereads reads 1, as db.stats() does."""
    async with Database(database_url, **ONE_CONNECTION) as db:
        dbscope.otel.instrument(db, meter_provider=sdk.provider)
        async with db.transaction(read_only=True) as session:
            backend = await _server_id(session)
        async with db.transaction(read_only=True) as session:
            await session.connection()
            async with helpers.admin(database_url) as connection:
                await helpers.kill(connection, backend)
            assert await _server_id(session) != backend
        stats, readings = db.stats(), sdk.read()
    assert readings.value("dbscope.unit.rereads", db.name) == stats.rereads == 1


async def test_durations_put_aside_stay_bounded_when_nothing_collects(
    sqlite_url: str, sdk: Metered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond PENDING_MAX durations waiting for a collection, a checkout records them: none
    is lost, and at most PENDING_MAX + 1 are kept."""
    monkeypatch.setattr(dbscope._otel_reporter, "PENDING_MAX", 5)
    async with Database(sqlite_url) as db:
        metrics = dbscope.otel.instrument(db, meter_provider=sdk.provider)
        kept = []
        for _ in range(20):
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
            kept.append(len(metrics._reporter._waits))
        readings = sdk.read()
    assert max(kept) <= 6
    assert readings.histogram("db.client.connection.wait_time", db.name).count == 20
    assert readings.histogram("db.client.connection.use_time", db.name).count == 20


async def test_a_checkout_past_the_bound_records_a_few_durations_not_the_backlog(
    sqlite_url: str, sdk: Metered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past PENDING_MAX, each checkout records RECORD_BATCH of each kind on the event loop
    (at 20,000, recording the whole backlog held the loop 880 ms); none is lost."""
    monkeypatch.setattr(dbscope._otel_reporter, "PENDING_MAX", 30)
    async with Database(sqlite_url) as db:
        reporter = dbscope.otel.instrument(db, meter_provider=sdk.provider)._reporter
        recorded = []
        for _ in range(60):
            before = len(reporter._waits) + len(reporter._uses)
            async with db.transaction() as session:
                await session.execute(text("SELECT 1"))
            recorded.append(before + 2 - len(reporter._waits) - len(reporter._uses))
        readings = sdk.read()
    assert max(recorded) == 4  # RECORD_BATCH (2) waits and as many uses
    assert readings.histogram("db.client.connection.wait_time", db.name).count == 60
    assert readings.histogram("db.client.connection.use_time", db.name).count == 60
