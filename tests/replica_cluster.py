"""A real PostgreSQL primary and a streaming replica of it, for the replica tests.

``tests/replicas/cluster`` makes the pair: two Debian clusters beside the machine's own, the
primary on 127.0.0.1:5433 and the replica, a base backup of it on a replication slot of its
own, on 127.0.0.1:5434, both with a database ``test`` (docs/replicas.md, "Trying replicas
locally"). :func:`ensure_pair` finds it running or starts it, :func:`release` stops it if
this run started it; ``DBSCOPE_TEST_PRIMARY_URL`` and ``DBSCOPE_TEST_REPLICA_URL`` name an
existing pair instead (which the tests then never stop), and ``DBSCOPE_REPLICAS_PORT`` /
``DBSCOPE_REPLICAS_NAME`` make the script's pair on other ports, under other names (beside
another checkout's, say).

Stale reads are made for real, on the replica: :func:`replay_paused` pauses WAL replay,
:func:`apply_delayed` delays the replay of every commit (``recovery_min_apply_delay``), and
:func:`replica_stopped` stops the replica's server. :func:`second_standby` adds a second
replica of the primary for the span of a block, on the next port. :func:`wait_for_replay`
waits until the replica has replayed what the primary committed; :func:`statements_served`
counts the statements the replica ran in a database (``pg_stat_statements``), so a test can
show that the replica was really read. These helpers run their own queries in the
``postgres`` database, so they never count as served.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import anyio
from sqlalchemy import TextClause, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.helpers import admin, exclusive
from tests.services import ServiceUnavailable, ensure_started, named_pair, script, stop

SCRIPT = Path(__file__).parent / "replicas" / "cluster"
# The script's pair: the primary on DBSCOPE_REPLICAS_PORT (5433), the replica on the next port.
PRIMARY_PORT = int(os.environ.get("DBSCOPE_REPLICAS_PORT", "5433"))
PRIMARY_URL = f"postgresql://postgres@127.0.0.1:{PRIMARY_PORT}/test"
REPLICA_URL = f"postgresql://postgres@127.0.0.1:{PRIMARY_PORT + 1}/test"
STANDBY_URL = f"postgresql://postgres@127.0.0.1:{PRIMARY_PORT + 2}/test"
# The start measured ~4 s (an earlier pair dropped first: ~5 s); this bounds a stuck one.
START_TIMEOUT = 120.0
WAIT_TIMEOUT = 10.0
# Held by each test that uses the pair (alone()).
LOCK = Path(tempfile.gettempdir()) / "dbscope-replica-tests.lock"

Role = Literal["primary", "replica"]


@dataclass(frozen=True)
class ReplicaPair:
    """The primary and its replica the replica tests run on.

    Attributes:
        primary: The primary's URL, ``postgresql://`` without a driver.
        replica: The replica's URL, the same way.
        managed: Made by tests/replicas/cluster, so the tests can stop and start the replica.
        started: Started by this test run, which stops it at its end.
    """

    primary: str
    replica: str
    managed: bool
    started: bool

    def url(self, role: Role, driver: str) -> str:
        """The primary's or the replica's URL through ``driver`` ('asyncpg', 'psycopg')."""
        url = make_url(self.primary if role == "primary" else self.replica)
        return url.set(drivername=f"postgresql+{driver}").render_as_string(hide_password=False)

    def urls(self, driver: str) -> tuple[str, str]:
        """The primary's and the replica's URL through ``driver``."""
        return self.url("primary", driver), self.url("replica", driver)


# -- the pair's life --------------------------------------------------------------------------


def cluster(command: str, *, timeout: float = START_TIMEOUT) -> subprocess.CompletedProcess[str]:
    """Run ``tests/replicas/cluster command``; its output, whatever its exit code."""
    return script(SCRIPT, command, timeout=timeout)


def ensure_pair(environ: Mapping[str, str] = os.environ) -> ReplicaPair:
    """The pair named by the environment, or the script's, running or started now.

    Raises:
        ServiceUnavailable: One URL without the other, or the script could not start the pair.
    """
    named = named_pair(environ, "DBSCOPE_TEST_PRIMARY_URL", "DBSCOPE_TEST_REPLICA_URL")
    if named is not None:
        return ReplicaPair(*named, managed=False, started=False)
    started = ensure_started(SCRIPT, "start", timeout=START_TIMEOUT, environ=environ)
    return ReplicaPair(PRIMARY_URL, REPLICA_URL, managed=True, started=started)


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Have the pair to this test alone: the tests share its tables and pause, delay or stop
    its one replica, so one at a time, whichever process (pytest-xdist's workers, two runs)
    runs them."""
    with exclusive(LOCK):
        yield


def release(pair: ReplicaPair) -> None:
    """Stop and drop the pair if this run started it; leave any other pair alone."""
    if pair.started:
        stop(SCRIPT, timeout=START_TIMEOUT)


async def stop_replica(pair: ReplicaPair) -> None:
    """Stop the replica's server (a fast shutdown); the primary goes on."""
    await _run(pair, "stop-replica")


async def start_replica(pair: ReplicaPair) -> None:
    """Start the replica's server again and wait until it streams."""
    await _run(pair, "start-replica")


@contextlib.asynccontextmanager
async def replica_stopped(pair: ReplicaPair) -> AsyncIterator[None]:
    """The replica's server is down inside the block, and up and streaming after it."""
    await stop_replica(pair)
    try:
        yield
    finally:
        await start_replica(pair)


@contextlib.asynccontextmanager
async def second_standby(pair: ReplicaPair) -> AsyncIterator[str]:
    """A second replica of the pair's primary, streaming, inside the block (~1.5 s to make):
    its URL (``postgresql://``, database ``test``). It is dropped after the block, whatever
    happens; :func:`drop_standby` drops it earlier."""
    await _run(pair, "add-standby")
    try:
        yield STANDBY_URL
    finally:
        await drop_standby(pair)


async def drop_standby(pair: ReplicaPair) -> None:
    """Stop and drop the second replica (and its slot on the primary), if there is one."""
    await _run(pair, "drop-standby")


async def _run(pair: ReplicaPair, command: str) -> None:
    if not pair.managed:
        message = f"{command} needs the pair of tests/replicas/cluster, not {pair.replica}"
        raise ServiceUnavailable(message)
    result = await anyio.run_process([str(SCRIPT), command], check=False)
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 0, f"{SCRIPT} {command}: {output}"


# -- WAL positions ----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _server(url: str) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection to the server of ``url``, in its ``postgres`` database."""
    server = make_url(url).set(drivername="postgresql+asyncpg", database="postgres")
    async with admin(server.render_as_string(hide_password=False)) as connection:
        yield connection


async def wal_position(primary_url: str) -> int:
    """The primary's WAL insert position, in bytes: the end of all it has written so far.

    Taken after a COMMIT, it covers that commit. At a page boundary
    ``pg_current_wal_insert_lsn()`` points past the next page's header, where the next record
    will go, and a replica that has replayed everything stops at the boundary, short of it
    (measured: 1 commit in ~1000); the header's bytes are taken off, as :func:`record_end` does.
    """
    async with _server(primary_url) as connection:
        return await insert_position(connection)


async def insert_position(connection: AsyncConnection) -> int:
    """:func:`wal_position`, read on ``connection`` (to the primary, in any database)."""
    row = (
        await connection.execute(
            text(
                "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn,"
                " current_setting('wal_block_size')::int,"
                " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
            )
        )
    ).one()
    return record_end(int(row[0]), block=int(row[1]), segment=int(row[2]))


def record_end(position: int, *, block: int = 8192, segment: int = 16 * 1024 * 1024) -> int:
    """An insert position as the end of the last record: a page's header taken off."""
    if position % segment == 40:  # a segment's first page has the long header
        return position - 40
    if position % block == 24:
        return position - 24
    return position


async def replay_position(replica_url: str) -> int | None:
    """The replica's ``pg_last_wal_replay_lsn()`` in bytes; None on a primary."""
    async with _server(replica_url) as connection:
        return await _replayed(connection)


async def _replayed(connection: AsyncConnection) -> int | None:
    replayed = await connection.scalar(text("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn"))
    return None if replayed is None else int(replayed)


async def wait_for_replay(
    primary_url: str,
    replica_url: str,
    *,
    position: int | None = None,
    within: float = WAIT_TIMEOUT,
) -> int:
    """Wait until the replica has replayed ``position`` (by default, all the primary has
    written now); the position waited for.

    Raises:
        TimeoutError: Not replayed within ``within`` seconds (replay paused or delayed, or
            a replica that does not stream).
    """
    target = await wal_position(primary_url) if position is None else position
    replayed: int | None = None

    async def reached() -> bool:
        nonlocal replayed
        replayed = await _replayed(connection)
        return replayed is not None and replayed >= target

    async with _server(replica_url) as connection:
        if await _until(reached, within):
            return target
    message = (
        f"The replica {replica_url} replayed WAL up to byte {replayed}, not {target}, within "
        f"{within} s: is its replay paused or delayed, or does it not stream?"
    )
    raise TimeoutError(message)


async def wait_for_receipt(
    replica_url: str, position: int, *, within: float = WAIT_TIMEOUT
) -> None:
    """Wait until the replica has received (flushed, not necessarily replayed) the WAL up to
    ``position``.

    Raises:
        TimeoutError: Not received within ``within`` seconds.
    """
    query = text("SELECT pg_last_wal_receive_lsn() - '0/0'::pg_lsn >= :position").bindparams(
        position=position
    )
    async with _server(replica_url) as connection:
        if not await _until(lambda: _true(connection, query), within):
            message = f"The replica {replica_url} did not receive WAL up to byte {position}."
            raise TimeoutError(message)


async def _until(check: Callable[[], Awaitable[bool]], within: float = WAIT_TIMEOUT) -> bool:
    """Whether ``check()`` came true within ``within`` seconds (asked every 5 ms)."""
    with anyio.move_on_after(within):
        while True:
            if await check():
                return True
            await anyio.sleep(0.005)
    return False


# -- stale reads on purpose -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def replay_paused(replica_url: str) -> AsyncIterator[None]:
    """WAL replay paused on the replica inside the block (it goes on receiving WAL);
    resumed after it, whatever happens."""
    async with _server(replica_url) as connection:
        await connection.execute(text("SELECT pg_wal_replay_pause()"))
        try:
            # A pause is only requested until the startup process takes it.
            state = text("SELECT pg_get_wal_replay_pause_state() = 'paused'")
            assert await _until(lambda: _true(connection, state)), "replay did not pause"
            yield
        finally:
            await connection.execute(text("SELECT pg_wal_replay_resume()"))


@contextlib.asynccontextmanager
async def apply_delayed(replica_url: str, milliseconds: int = 5000) -> AsyncIterator[None]:
    """Each commit applied on the replica ``milliseconds`` after it was made on the primary,
    inside the block (``recovery_min_apply_delay``; other WAL is replayed at once); reset
    after it, whatever happens."""
    async with _server(replica_url) as connection:
        await _set_apply_delay(connection, int(milliseconds))
        try:
            yield
        finally:
            await _set_apply_delay(connection, 0)


async def _set_apply_delay(connection: AsyncConnection, milliseconds: int) -> None:
    change = (
        f"SET recovery_min_apply_delay = {milliseconds}"
        if milliseconds
        else "RESET recovery_min_apply_delay"
    )
    await connection.execute(text(f"ALTER SYSTEM {change}"))
    await connection.execute(text("SELECT pg_reload_conf()"))
    # The reload signals this backend and the startup process at once: once this backend
    # shows the new value, the startup process has its signal too, and reads the file before
    # it replays (or goes on waiting for) the next record.
    shown = text(
        "SELECT setting::int = :wanted FROM pg_settings WHERE name = 'recovery_min_apply_delay'"
    ).bindparams(wanted=milliseconds)
    assert await _until(lambda: _true(connection, shown)), "the new delay was not loaded"


async def _true(connection: AsyncConnection, query: TextClause) -> bool:
    return bool(await connection.scalar(query))


# -- reads served -----------------------------------------------------------------------------


async def statements_served(replica_url: str, database: str | None = None) -> int:
    """How many statements the replica has run in ``database`` (by default the URL's), as
    ``pg_stat_statements`` counts them: BEGIN and COMMIT included, its own queries not.

    Compare the counts before and after a test's reads to show the replica served some.
    """
    name = database or make_url(replica_url).database
    async with _server(replica_url) as connection:
        served = await connection.scalar(
            text(
                "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements"
                " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = :name)"
            ),
            {"name": name},
        )
    return int(served)
