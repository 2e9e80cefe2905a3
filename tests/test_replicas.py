"""Read replicas, routing: whole read-only units run on the replica, every other unit on the
primary, on a real primary and streaming replica (tests/replica_cluster.py).

Each test asks the unit itself where it ran (``SELECT pg_is_in_recovery()``) and checks that
dbscope counted it (``db.stats().replicas[0].served``).
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database, DatabaseUnavailableError
from tests.helpers import admin, app_with, client_for
from tests.replica_cluster import ReplicaPair, apply_delayed, replay_paused, replica_stopped
from tests.replica_reads import (
    TABLE,
    add_item,
    fallbacks,
    has_item,
    in_recovery,
    replicated,
    served,
)

pytest_plugins = ["tests.replica_fixtures"]

# Runs units of one kind on a Database; where each unit ran (True: the replica).
Units = Callable[[Database], Awaitable[list[bool]]]


async def terminate_backend(session: AsyncSession, replica_url: str) -> bool:
    """Terminate the session's server process on the replica, before any statement of its
    own; whether the replica had it (so the unit was on the replica)."""
    raw = await (await session.connection()).get_raw_connection()
    driver: Any = raw.driver_connection  # asyncpg's or psycopg's connection
    pid = driver.get_server_pid() if hasattr(driver, "get_server_pid") else driver.info.backend_pid
    async with admin(replica_url) as connection:
        query = text("SELECT pg_terminate_backend(:pid)")
        return bool(await connection.scalar(query, {"pid": pid}))


async def read_only_transaction(db: Database) -> list[bool]:
    async with db.transaction(read_only=True) as session:
        return [await in_recovery(session)]


async def read_session_request(db: Database) -> list[bool]:
    return await _requests(db, db.read_session)


async def parallel_reads(db: Database) -> list[bool]:
    return list(await db.parallel(in_recovery, in_recovery, in_recovery))


async def read_only_stream(db: Database) -> list[bool]:
    async def rows(session: AsyncSession) -> AsyncIterator[bool]:
        yield await in_recovery(session)

    return [found async for found in db.stream(rows, read_only=True)]


async def transaction(db: Database) -> list[bool]:
    async with db.transaction() as session:
        return [await in_recovery(session)]


async def session_request(db: Database) -> list[bool]:
    return await _requests(db, db.session)


async def retried_unit(db: Database) -> list[bool]:
    async for attempt in db.retrying(attempts=2):
        async with attempt as session:
            return [await in_recovery(session)]
    raise AssertionError("no attempt ran")


async def read_only_retried_unit(db: Database) -> list[bool]:
    async for attempt in db.retrying(read_only=True, attempts=2):
        async with attempt as session:
            return [await in_recovery(session)]
    raise AssertionError("no attempt ran")


async def read_write_parallel(db: Database) -> list[bool]:
    return list(await db.parallel(in_recovery, in_recovery, read_only=False))


async def stream(db: Database) -> list[bool]:
    async def rows(session: AsyncSession) -> AsyncIterator[bool]:
        yield await in_recovery(session)

    return [found async for found in db.stream(rows)]


async def where(session: AsyncSession) -> bool:
    """An endpoint: whether the request's unit runs on the replica."""
    return await in_recovery(session)


async def _requests(db: Database, dependency: Callable[..., Awaitable[AsyncSession]]) -> list[bool]:
    """Two requests to an in-process app whose endpoint takes ``dependency``'s session."""
    async with client_for(app_with(dependency, {"GET /where": where})) as client:
        return [(await client.get("/where")).json() for _ in range(2)]


@pytest.mark.parametrize(
    "units", [read_only_transaction, read_session_request, parallel_reads, read_only_stream]
)
async def test_read_only_units_run_on_the_replica(urls: tuple[str, str], units: Units) -> None:
    """transaction(read_only=True), read_session, parallel() and read-only streams run on
    the replica, each counted as served by it."""
    async with replicated(urls) as db:
        ran_on_replica = await units(db)
        assert ran_on_replica
        assert all(ran_on_replica)
        assert served(db) == len(ran_on_replica)
        assert fallbacks(db) == {}


@pytest.mark.parametrize(
    "units",
    [
        transaction,
        session_request,
        retried_unit,
        read_only_retried_unit,
        read_write_parallel,
        stream,
    ],
)
async def test_read_write_and_retried_units_run_on_the_primary(
    urls: tuple[str, str], units: Units
) -> None:
    """transaction(), Depends(db.session), retrying() (read-only too), parallel(read_only=
    False) and streams run on the primary, though the replica is ready."""
    async with replicated(urls) as db:
        ran_on_replica = await units(db)
        assert ran_on_replica
        assert not any(ran_on_replica)
        assert db.stats().replicas[0].state == "ready"
        assert served(db) == 0


async def test_a_unit_that_reads_then_writes_reads_the_primary(urls: tuple[str, str]) -> None:
    """A read-then-write unit sees a write the replica has not replayed, and updates it."""
    async with replicated(urls) as db, replay_paused(urls[1]):
        await add_item(db, 1)
        async with db.transaction() as session:
            assert await has_item(session, 1)
            await session.execute(text(f"UPDATE {TABLE} SET note = 'seen' WHERE id = 1"))
            assert not await in_recovery(session)
        async with db.transaction() as session:
            note = await session.scalar(text(f"SELECT note FROM {TABLE} WHERE id = 1"))
        assert note == "seen"
        assert served(db) == 0


async def test_a_serializable_read_only_unit_runs_on_the_primary(urls: tuple[str, str]) -> None:
    """A hot standby refuses SERIALIZABLE: such a read-only unit runs on the primary, counted."""
    async with replicated(urls) as db:
        async with db.transaction(read_only=True, isolation_level="SERIALIZABLE") as session:
            assert not await in_recovery(session)
            level = await session.scalar(text("SHOW transaction_isolation"))
        assert level == "serializable"
        assert served(db) == 0
        assert fallbacks(db) == {"isolation_level": 1}


async def test_a_repeatable_read_unit_without_a_token_runs_on_the_replica(
    urls: tuple[str, str],
) -> None:
    """REPEATABLE READ is a replica's to serve while no write must be seen."""
    async with replicated(urls) as db:
        async with db.transaction(read_only=True, isolation_level="REPEATABLE READ") as session:
            assert await in_recovery(session)
            level = await session.scalar(text("SHOW transaction_isolation"))
        assert level == "repeatable read"
        assert served(db) == 1


async def test_a_multi_host_replica_url_reads_the_standby_among_its_hosts(
    urls: tuple[str, str],
) -> None:
    """A replica URL listing the primary and the replica with target_session_attrs=standby
    connects to the one in recovery, and serves from it."""
    primary, replica = (make_url(url) for url in urls)
    hosts = [f"{url.host}:{url.port}" for url in (primary, replica)]
    multi_host = primary.set(host=None, port=None, query={"host": hosts}).update_query_dict(
        {"target_session_attrs": "standby"}
    )
    async with Database(primary, replicas=[multi_host]) as db:
        async with db.transaction(read_only=True) as session:
            assert await in_recovery(session)
            port = await session.scalar(text("SELECT inet_server_port()"))
        assert port == replica.port
        assert served(db) == 1


async def test_a_read_whose_replica_connection_is_lost_in_its_first_statement_reads_the_primary(
    urls: tuple[str, str],
) -> None:
    """The replica's backend of a read-only unit is terminated before its first statement:
    the statement runs again on the primary, the replica is taken out of service, counted."""
    primary_port = make_url(urls[0]).port
    async with replicated(urls) as db:
        async with db.transaction(read_only=True) as session:
            assert await terminate_backend(session, urls[1])
            port = await session.scalar(text("SELECT inet_server_port()"))
            assert not await in_recovery(session)
        stats = db.stats()
    assert port == primary_port
    assert dict(stats.fallbacks) == {"connection_lost": 1}
    assert stats.replicas[0].state == "down"
    assert stats.replicas[0].served == 0


@pytest.mark.parametrize("through", ["session", "connection"])
async def test_a_read_whose_replica_connection_is_lost_after_its_first_result_fails(
    urls: tuple[str, str], through: str
) -> None:
    """Once a statement has returned rows, through the session or through the Connection
    ``session.connection()`` gave, a lost replica connection is an outage (503), not a silent
    second read elsewhere (through the Connection, it read the primary)."""
    seen: list[bool] = []

    async def read_twice() -> None:
        async with db.transaction(read_only=True) as session:
            runs = session if through == "session" else await session.connection()
            seen.append(await runs.scalar(text("SELECT pg_is_in_recovery()")))
            seen.append(await terminate_backend(session, urls[1]))
            await session.scalar(text("SELECT 1"))

    async with replicated(urls) as db:
        with pytest.raises(DatabaseUnavailableError):
            await read_twice()
        assert dict(db.stats().fallbacks) == {}
    assert seen == [True, True]


async def test_a_read_that_first_takes_its_connection_reads_the_primary_if_the_replica_is_down(
    urls: tuple[str, str], replica_pair: ReplicaPair
) -> None:
    """``session.connection()`` is the unit's first use of its replica: with the replica
    stopped, and not yet known to be (checks an hour apart), the unit takes the primary's
    connection instead, counted, where it answered 503."""
    async with replicated(urls, replica_check_interval=3600) as db, replica_stopped(replica_pair):
        async with db.transaction(read_only=True) as session:
            connection = await session.connection()
            on_replica = await connection.scalar(text("SELECT pg_is_in_recovery()"))
        stats = db.stats()
    assert on_replica is False
    assert sum(dict(stats.fallbacks).values()) == 1, stats.fallbacks
    assert stats.replicas[0].served == 0


async def test_a_read_after_a_commit_in_the_middle_of_a_unit_sees_the_write(
    urls: tuple[str, str],
) -> None:
    """The write token is kept at the commit, not at the unit's end: a read-only unit opened
    after ``session.commit()`` in the same context sees the write, with the replica 2 s late
    applying it (it read the replica, and missed it)."""
    query = text(f"INSERT INTO {TABLE} (id) VALUES (1)")

    async def sees_it(db: Database) -> bool:
        async with db.transaction(read_only=True) as reader:
            return await has_item(reader, 1)

    async with replicated(urls) as db, apply_delayed(urls[1], 2000):
        async with db.transaction() as session:
            await session.execute(query)
            await session.commit()
            token = db.write_token()
            seen = await sees_it(db)
        stats = db.stats()
    assert token is not None
    assert seen
    assert stats.replicas[0].served + sum(dict(stats.fallbacks).values()) == 1
