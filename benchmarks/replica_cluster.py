"""The replica pair the replica benchmark runs on, its database, and the replica's apply delay.

The pair is the one ``tests/replicas/cluster`` makes: a PostgreSQL 15 primary on
127.0.0.1:5433 and a streaming replica of it on :5434, or the pair ``DBSCOPE_REPLICAS_NAME``
and ``DBSCOPE_REPLICAS_PORT`` name (the replica on the next port; the script reads them
too), so that the benchmark can run on a pair of its own beside the tests'. The benchmark
keeps its tables in a database of its own, ``bench_replicas``; the replica receives them by
streaming.

Stale reads are provoked for real: ``recovery_min_apply_delay`` on the replica holds back the
replay of each commit record (:func:`apply_delay`), and is always set back to nothing when
the block ends. On a pair shared with test runs, the delay and a stopped replica are kept as
short as the measurement needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from typing import Final

import asyncpg

from benchmarks import data
from benchmarks.servers import HOST, ROOT
from benchmarks.variants.common import ROWS, TABLE

SCRIPT: Final = ROOT / "tests" / "replicas" / "cluster"


def _primary_port() -> int:
    given = os.environ.get("DBSCOPE_REPLICAS_PORT", "5433")
    if not (given.isdigit() and 1024 <= int(given) < 65535):
        message = f"DBSCOPE_REPLICAS_PORT is {given!r}: use a free TCP port from 1024 to 65534"
        raise SystemExit(message)
    return int(given)


PRIMARY_PORT: Final = _primary_port()
REPLICA_PORT: Final = PRIMARY_PORT + 1
DATABASE: Final = "bench_replicas"
# Each write-then-read client's latest sequence number, one row per client.
PAIRS_TABLE: Final = "bench_replica_pairs"
# The script waits up to 60 s for the replica to stream; a fresh pair takes ~11 s more.
SCRIPT_TIMEOUT: Final = 180.0
CATCH_UP_TIMEOUT: Final = 60.0
POLL: Final = 0.05


class ClusterError(RuntimeError):
    """The replica pair could not be made ready, or changed; the message says what failed."""


def url(port: int, database: str = DATABASE) -> str:
    """A URL (no driver) for ``database`` on the server at ``port`` of 127.0.0.1."""
    return f"postgresql://postgres@{HOST}:{port}/{database}"


PRIMARY_URL: Final = url(PRIMARY_PORT)
REPLICA_URL: Final = url(REPLICA_PORT)


def script(command: str) -> None:
    """Run ``tests/replicas/cluster <command>``; raise ClusterError with its output on failure."""
    try:
        completed = subprocess.run(
            [str(SCRIPT), command],
            capture_output=True,
            text=True,
            timeout=SCRIPT_TIMEOUT,
            check=False,
            preexec_fn=_all_cores,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ClusterError(f"{SCRIPT.name} {command} did not run: {error}") from error
    if completed.returncode != 0:
        output = (completed.stderr or completed.stdout).strip()
        raise ClusterError(f"{SCRIPT.name} {command} failed: {output}")


def _all_cores() -> None:
    # The benchmark pins itself to the load's core; a server the script starts (the replica,
    # again) must not inherit that, or it would stay pinned after the run.
    os.sched_setaffinity(0, range(os.cpu_count() or 1))


def status() -> str | None:
    """None when the primary runs and the replica streams from it, else why not."""
    try:
        script("status")
    except ClusterError as error:
        return str(error)
    return None


def ensure_pair() -> bool:
    """Make sure the pair runs: the replica started again if only it is down, else a new pair.

    Returns:
        Whether a new pair was made (which the run then stops at its end, as it found none).

    Raises:
        ClusterError: neither brought the pair up.
    """
    if status() is None:
        return False
    with contextlib.suppress(ClusterError):
        script("start-replica")  # only the replica down: no need to make the pair anew
        if status() is None:
            return False
    script("start")
    return True


async def prepare() -> None:
    """The benchmark's database, its two tables (the pairs' emptied), and the replica caught
    up with them."""
    admin = await asyncpg.connect(url(PRIMARY_PORT, "postgres"), timeout=10)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await admin.execute(f"CREATE DATABASE {DATABASE}")
    finally:
        await admin.close()
    await data.ensure_world(PRIMARY_URL)
    primary = await asyncpg.connect(PRIMARY_URL, timeout=10)
    try:
        await primary.execute(
            f"CREATE TABLE IF NOT EXISTS {PAIRS_TABLE} "
            "(client integer PRIMARY KEY, seq integer NOT NULL)"
        )
        await primary.execute(f"TRUNCATE {PAIRS_TABLE}")
    finally:
        await primary.close()
    await _until_replica_has_world()


async def _until_replica_has_world() -> None:
    deadline = time.monotonic() + CATCH_UP_TIMEOUT
    while True:
        with contextlib.suppress(asyncpg.PostgresError, OSError):
            replica = await asyncpg.connect(REPLICA_URL, timeout=10)
            try:
                count = await replica.fetchval(f"SELECT count(*) FROM {TABLE}")
                # Emptied: no number of an earlier run can pass for a fresh one.
                left = await replica.fetchval(f"SELECT count(*) FROM {PAIRS_TABLE}")
            finally:
                await replica.close()
            if count == ROWS and left == 0:
                return
        if time.monotonic() > deadline:
            message = f"the replica has not replayed {TABLE} after {CATCH_UP_TIMEOUT:.0f} s"
            raise ClusterError(message)
        await asyncio.sleep(POLL)


async def set_apply_delay(milliseconds: int | None) -> None:
    """Delay the replica's replay of each commit by ``milliseconds``; None sets it back.

    Returns once the replica reports the new setting (a reload is applied asynchronously).
    """
    replica = await asyncpg.connect(url(REPLICA_PORT, "postgres"), timeout=10)
    try:
        if milliseconds is None:
            await replica.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        else:
            await replica.execute(
                f"ALTER SYSTEM SET recovery_min_apply_delay = '{int(milliseconds)}ms'"
            )
        await replica.execute("SELECT pg_reload_conf()")
        wanted = "0" if not milliseconds else f"{int(milliseconds)}ms"
        deadline = time.monotonic() + 10
        while await replica.fetchval("SHOW recovery_min_apply_delay") != wanted:
            if time.monotonic() > deadline:
                raise ClusterError(f"the replica did not take recovery_min_apply_delay={wanted}")
            await asyncio.sleep(POLL)
    finally:
        await replica.close()


@contextlib.asynccontextmanager
async def apply_delay(milliseconds: int) -> AsyncIterator[None]:
    """The replica's apply delayed by ``milliseconds`` within the block, and never after it."""
    await set_apply_delay(milliseconds or None)
    try:
        yield
    finally:
        await set_apply_delay(None)


def reset_apply_delay() -> str | None:
    """Set the replica's delay back (after a run that may have died mid-way); None if done,
    else why it could not be (the replica down, say)."""
    try:
        asyncio.run(set_apply_delay(None))
    except (OSError, asyncpg.PostgresError, ClusterError, TimeoutError) as error:
        return f"could not reset recovery_min_apply_delay on the replica: {error}"
    return None


async def run_script(command: str) -> float:
    """``tests/replicas/cluster <command>`` without blocking the event loop; its seconds.

    Its output goes to a file, not a pipe: waiting for a pipe's end would wait for every
    process holding it, and under uvloop the server that start-replica starts did (measured:
    the script done in 0.2 s, the pipe still open after 180 s).
    """
    started = time.monotonic()
    with tempfile.TemporaryFile() as output:
        process = await asyncio.create_subprocess_exec(
            str(SCRIPT), command, stdout=output, stderr=subprocess.STDOUT, preexec_fn=_all_cores
        )
        try:
            async with asyncio.timeout(SCRIPT_TIMEOUT):
                await process.wait()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
            raise ClusterError(
                f"{SCRIPT.name} {command} took over {SCRIPT_TIMEOUT:.0f} s"
            ) from None
        if process.returncode != 0:
            output.seek(0)
            text = output.read().decode(errors="replace").strip()
            raise ClusterError(f"{SCRIPT.name} {command} failed: {text}")
    return time.monotonic() - started
