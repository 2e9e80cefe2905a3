"""The PgBouncer benchmark's second measurement: the server connections of N app processes.

N uvicorn processes (a pool of 10 each) loaded at once, on the server itself and through the
``transaction`` PgBouncer (``default_pool_size = 10``), while ``pg_stat_activity`` is read
every 100 ms; before each phase both PgBouncers close their server connections to the
database (``RECONNECT``), so that every backend counted is the phase's own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import subprocess
import time
from typing import Any, Final

import asyncpg
from sqlalchemy.engine import make_url

from benchmarks import loadgen, servers
from benchmarks.config import SERVER_CORE
from benchmarks.pgbouncer_targets import APPLICATION, POOL_SIZE, PORT, Target, target_env

SAMPLE_EVERY: Final = 0.1
DRAIN_TIMEOUT: Final = 10.0


def connections(url: str, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    """``args.processes`` apps on ``target``, loaded at once for ``args.spread`` seconds;
    the server connections of the database meanwhile, read from pg_stat_activity."""
    database = make_url(url).database or ""
    _reconnect(database)
    if not loadgen.run_async(_drained(url, database)):
        raise RuntimeError(f"connections to {database} remain before the {target.key} phase")
    logs = args.output / "logs"
    with contextlib.ExitStack() as stack:
        apps = [
            stack.enter_context(
                servers.running(
                    f"pgbouncer-app-{number}",
                    "dbscope_pgbouncer",
                    env=target_env(url, target, f"{APPLICATION}-{number}"),
                    log=logs / f"pgbouncer-app-{target.key}-{number}.log",
                    core=SERVER_CORE,
                    fast=servers.fast_stack(),
                )
            )
            for number in range(args.processes)
        ]
        loads, samples = loadgen.run_async(_spread_load(url, database, apps, args))
    statuses: dict[int, int] = {}
    for result in loads:
        for status, count in result.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    ok = statuses.get(200, 0)
    return {
        "target": target.label,
        "key": target.key,
        "processes": args.processes,
        "client_connections": args.processes * POOL_SIZE,
        "server_connections_peak": max(total for total, _ in samples),
        "server_connections_median": statistics.median(total for total, _ in samples),
        "busy_peak": max(busy for _, busy in samples),
        "samples": len(samples),
        "requests_per_second": round(ok / args.spread, 1),
        "failures": sum(statuses.values()) - ok + sum(result.transport_errors for result in loads),
    }


COUNT: Final = """
SELECT count(*), count(*) FILTER (WHERE state <> 'idle')
FROM pg_stat_activity
WHERE datname = $1 AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


def _reconnect(database: str) -> None:
    """Both PgBouncers close their server connections to ``database`` (the idle ones now)."""
    for port in (PORT, PORT + 1):  # PgBouncer's console speaks the simple protocol only: psql
        command = ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres"]
        command += ["-d", "pgbouncer", "-c", f"RECONNECT {database}"]
        subprocess.run(command, capture_output=True, timeout=30, check=True)


async def _drained(url: str, database: str) -> bool:
    """Whether no connection to ``database`` remains within DRAIN_TIMEOUT seconds."""
    watcher = await asyncpg.connect(make_url(url).set(database="postgres").render_as_string(False))
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline:
            total, _ = await watcher.fetchrow(COUNT, database)
            if total == 0:
                return True
            await asyncio.sleep(SAMPLE_EVERY)
        return False
    finally:
        await watcher.close()


async def _spread_load(
    url: str, database: str, apps: list[servers.Server], args: argparse.Namespace
) -> tuple[list[loadgen.LoadResult], list[tuple[int, int]]]:
    """Load every app at once; pg_stat_activity read every SAMPLE_EVERY seconds meanwhile."""
    watcher = await asyncpg.connect(make_url(url).set(database="postgres").render_as_string(False))
    samples: list[tuple[int, int]] = []
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            total, busy = await watcher.fetchrow(COUNT, database)
            samples.append((int(total), int(busy)))
            await asyncio.sleep(SAMPLE_EVERY)

    sampler = asyncio.create_task(sample())
    try:
        clients = max(1, args.connections // len(apps))
        loads = await asyncio.gather(
            *(
                loadgen.run_load(app.port, "/db", connections=clients, duration=args.spread)
                for app in apps
            )
        )
    finally:
        done.set()
        await sampler
        await watcher.close()
    return list(loads), samples
