"""The replica pair the replica tests stand on (tests/replicas/cluster, tests/replica_cluster.py):
a real primary and a replica that streams from it, and stale reads made for real on it."""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from tests.documented import ROOT, block_containing
from tests.helpers import admin
from tests.replica_cluster import (
    PRIMARY_PORT,
    ReplicaPair,
    apply_delayed,
    cluster,
    insert_position,
    record_end,
    replay_paused,
    replay_position,
    replica_stopped,
    statements_served,
    wait_for_receipt,
    wait_for_replay,
)

TABLE = "replica_cluster_rows"


@pytest.fixture
async def rows(primary_url: str, replica_url: str) -> AsyncIterator[None]:
    """An empty table on the primary, replayed on the replica; dropped after the test."""
    async with admin(primary_url) as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        await connection.execute(text(f"CREATE TABLE {TABLE} (id int PRIMARY KEY)"))
    await wait_for_replay(primary_url, replica_url)
    yield
    async with admin(primary_url) as connection:
        await connection.execute(text(f"DROP TABLE {TABLE}"))


async def insert(primary_url: str, row: int) -> int:
    """Commit the row ``row`` on the primary; the WAL position read after the COMMIT."""
    async with admin(primary_url) as connection:
        await connection.execute(text(f"INSERT INTO {TABLE} VALUES (:id)"), {"id": row})
        return await insert_position(connection)


async def visible(url: str, row: int) -> bool:
    """Whether the server of ``url`` has the row ``row``, read in a transaction of its own."""
    async with admin(url) as connection:
        query = text(f"SELECT count(*) FROM {TABLE} WHERE id = :id")
        return bool(await connection.scalar(query, {"id": row}))


async def one(url: str, query: str) -> object:
    """The one value ``query`` gives on the server of ``url``."""
    async with admin(url) as connection:
        return await connection.scalar(text(query))


async def test_the_replica_streams_from_a_replication_slot_of_its_own(
    replica_pair: ReplicaPair,
) -> None:
    """The primary shows the replica streaming on the slot the replica's settings name."""
    primary, replica = replica_pair.urls("asyncpg")
    slot = await one(replica, "SHOW primary_slot_name")
    streaming = await one(
        primary,
        "SELECT string_agg(s.slot_name, ',') FROM pg_stat_replication AS r"
        " JOIN pg_replication_slots AS s ON s.active_pid = r.pid WHERE r.state = 'streaming'",
    )
    assert slot
    assert streaming == slot


async def test_only_the_replica_is_in_recovery(replica_pair: ReplicaPair) -> None:
    """pg_is_in_recovery() is true on the replica, false on the primary, which has no replay
    position."""
    primary, replica = replica_pair.urls("asyncpg")
    assert await one(replica, "SELECT pg_is_in_recovery()") is True
    assert await one(primary, "SELECT pg_is_in_recovery()") is False
    assert await replay_position(primary) is None
    assert await replay_position(replica) is not None


async def test_a_row_committed_on_the_primary_is_read_on_the_replica_after_the_wait(
    primary_url: str, replica_url: str, rows: None
) -> None:
    """Once the replica has replayed the primary's position, it has the committed row."""
    await insert(primary_url, 1)
    await wait_for_replay(primary_url, replica_url)
    assert await visible(replica_url, 1)


async def test_with_replay_paused_a_committed_row_is_stale_on_the_replica_until_resumed(
    primary_url: str, replica_url: str, rows: None
) -> None:
    """The replica receives the commit but, paused, neither replays it nor shows the row; it
    does both once replay resumes."""
    async with replay_paused(replica_url):
        position = await insert(primary_url, 1)
        await wait_for_receipt(replica_url, position)
        replayed = await replay_position(replica_url)
        assert replayed is not None
        assert replayed < position
        assert not await visible(replica_url, 1)
        assert await visible(primary_url, 1)
    await wait_for_replay(primary_url, replica_url, position=position)
    assert await visible(replica_url, 1)


async def test_a_position_taken_inside_the_transaction_is_replayed_before_its_commit(
    primary_url: str, replica_url: str, rows: None
) -> None:
    """With each commit's apply delayed, the replica reaches the position read before COMMIT
    and still misses the row: only a position read after COMMIT covers the write."""
    async with apply_delayed(replica_url, milliseconds=30_000):
        async with admin(primary_url) as connection:
            # admin() connects in autocommit mode, where begin() starts no transaction.
            await connection.execution_options(isolation_level="READ COMMITTED")
            async with connection.begin():
                await connection.execute(text(f"INSERT INTO {TABLE} VALUES (1)"))
                inside = await insert_position(connection)
        await wait_for_replay(primary_url, replica_url, position=inside)
        assert not await visible(replica_url, 1)
        with pytest.raises(TimeoutError):
            await wait_for_replay(primary_url, replica_url, within=0.5)
    await wait_for_replay(primary_url, replica_url)
    assert await visible(replica_url, 1)


def test_an_insert_position_just_past_a_page_header_is_the_end_of_the_page_s_last_record() -> None:
    """A position 24 bytes into a WAL page (40 into a segment) is the boundary before the
    header; any other is kept."""
    page, segment = 8192, 16 * 1024 * 1024
    assert record_end(5 * page + 24) == 5 * page
    assert record_end(3 * segment + 40) == 3 * segment
    assert record_end(5 * page + 40) == 5 * page + 40
    assert record_end(5 * page + 1000) == 5 * page + 1000


async def test_replay_resumes_and_the_apply_delay_resets_when_their_block_raises(
    replica_pair: ReplicaPair,
) -> None:
    """An error inside replay_paused or apply_delayed leaves the replica replaying at once."""
    replica = replica_pair.url("replica", "asyncpg")
    seen: list[object] = []

    async def fail_while_paused() -> None:
        async with replay_paused(replica):
            seen.append(await one(replica, "SELECT pg_get_wal_replay_pause_state()"))
            raise RuntimeError

    async def fail_while_delayed() -> None:
        async with apply_delayed(replica, milliseconds=2000):
            seen.append(await one(replica, "SHOW recovery_min_apply_delay"))
            raise RuntimeError

    with pytest.raises(RuntimeError):
        await fail_while_paused()
    with pytest.raises(RuntimeError):
        await fail_while_delayed()
    assert seen == ["paused", "2s"]
    assert await one(replica, "SELECT pg_get_wal_replay_pause_state()") == "not paused"
    assert await one(replica, "SHOW recovery_min_apply_delay") == "0"


async def test_statements_served_counts_what_the_replica_ran_in_its_database(
    primary_url: str, replica_url: str, rows: None
) -> None:
    """Reads on the replica raise the count; reads on the primary and the helpers' own queries
    do not."""
    before = await statements_served(replica_url)
    async with admin(replica_url) as connection:
        for _ in range(3):
            await connection.execute(text(f"SELECT count(*) FROM {TABLE}"))
    after_reads = await statements_served(replica_url)
    await visible(primary_url, 1)
    await wait_for_replay(primary_url, replica_url)
    assert after_reads - before >= 3
    assert await statements_served(replica_url) == after_reads


async def test_a_stopped_replica_refuses_connections_and_streams_again_once_started(
    replica_pair: ReplicaPair,
) -> None:
    """While the replica is down, connecting fails and status says so; started again, it
    streams and replays what the primary committed meanwhile."""
    if not replica_pair.managed:
        pytest.skip("the pair named by the environment is not the script's to stop")
    primary, replica = replica_pair.urls("asyncpg")
    async with admin(primary) as connection:
        await connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))
        await connection.execute(text(f"CREATE TABLE {TABLE} (id int PRIMARY KEY)"))
    try:
        async with replica_stopped(replica_pair):
            with pytest.raises((DBAPIError, OSError)):
                await one(replica, "SELECT 1")
            status = cluster("status")
            assert status.returncode == 1
            assert "the replica" in status.stderr
            assert "is down" in status.stderr
            await insert(primary, 1)
        assert cluster("status").returncode == 0
        await wait_for_replay(primary, replica)
        assert await visible(replica, 1)
    finally:
        async with admin(primary) as connection:
            await connection.execute(text(f"DROP TABLE IF EXISTS {TABLE}"))


def test_the_documented_commands_start_check_and_stop_a_pair(replica_pair: ReplicaPair) -> None:
    """docs/replicas.md's commands, run as written on a pair of their own beside the run's:
    start prints both URLs, status passes, the replica is in recovery, and stop leaves
    nothing listening."""
    if not replica_pair.managed:
        pytest.skip("the environment names a pair of its own: the script may not run here")
    lines = [
        line.split("#")[0].strip()
        for line in block_containing("docs/replicas.md", "cluster status", language="sh")
        .strip()
        .splitlines()
    ]
    ports = (PRIMARY_PORT + 2, PRIMARY_PORT + 3)
    try:
        outputs = [run_documented(line, ports) for line in lines]
        assert f"postgresql://postgres@127.0.0.1:{ports[0]}/test" in outputs[0]
        assert f"postgresql://postgres@127.0.0.1:{ports[1]}/test" in outputs[0]
        assert "streaming" in outputs[1]
        assert outputs[2].split() == ["pg_is_in_recovery", "-------------------", "t", "(1", "row)"]
        for port in ports:
            ready = subprocess.run(["pg_isready", "-h", "127.0.0.1", "-p", str(port)], check=False)
            assert ready.returncode != 0
    finally:
        run_documented("tests/replicas/cluster stop", ports)


def run_documented(line: str, ports: tuple[int, int]) -> str:
    """Run one documented command from the repository's root, on the pair of ``ports``
    (sudo left out for root); its output, once it succeeded."""
    for documented, actual in zip((5433, 5434), ports, strict=True):
        line = line.replace(f":{documented}/", f":{actual}/")
    words = shlex.split(line)
    if words[0] == "sudo" and os.geteuid() == 0:
        words = words[1:]
    name = os.environ.get("DBSCOPE_REPLICAS_NAME", "dbscope")
    environment = {
        **os.environ,
        "DBSCOPE_REPLICAS_NAME": f"{name}_docs",
        "DBSCOPE_REPLICAS_PORT": str(ports[0]),
    }
    done = subprocess.run(
        words, cwd=ROOT, env=environment, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"{line}: {done.stdout}{done.stderr}"
    return done.stdout
