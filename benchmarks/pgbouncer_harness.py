"""The PgBouncer benchmark's run: the PgBouncers ready, the two measurements, the report.

- **Throughput.** Three uvicorn workers of ``benchmarks/variants/dbscope_pgbouncer.py``, each
  with a pool of 10: on the server itself, through PgBouncer with ``pgbouncer="transaction"``
  (6432, no prepared statements) and with ``"transaction-prepared"`` (6433,
  ``max_prepared_statements = 200``). Each round loads ``/db`` and ``/updates?q=5`` on each,
  the three in an order rotated each round; servers on core 1, wrk (or the Python load
  generator) on core 0.
- **Server connections.** N app processes (pool 10 each) loaded at once, without PgBouncer
  and through the ``transaction`` one (``default_pool_size = 10``), while
  ``pg_stat_activity`` is read every 100 ms: how many server connections the database had
  (pgbouncer_connections.py).

Every server is stopped when its block ends; the PgBouncers are stopped at the end if the
run started them. Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy.engine import make_url

from benchmarks import data, loadgen, servers, wrk
from benchmarks.config import SERVER_CORE
from benchmarks.environment import describe_environment
from benchmarks.pgbouncer_connections import connections
from benchmarks.pgbouncer_report import write_report
from benchmarks.pgbouncer_targets import (
    DIRECT,
    POOL_SIZE,
    PREPARED,
    TARGETS,
    TRANSACTION,
    Target,
    target_env,
)
from benchmarks.throughput import (
    Settings,
    add_throughput_options,
    measure_load,
    median_of,
    parse_throughput_args,
    round_ratios,
    spread_of,
)
from benchmarks.variants.common import bench_settings

RESULTS: Final = servers.ROOT / "benchmarks" / "results"
BOUNCER: Final = servers.ROOT / "tests" / "pgbouncer" / "bouncer"
PATHS: Final = ("/db", "/updates?q=5")
FULL: Final = {"rounds": 3, "duration": 3.0, "spread": 8.0}
SMOKE: Final = {"rounds": 1, "duration": 1.0, "spread": 2.0}


@dataclass(frozen=True)
class Run:
    """One load run on one target: requests/s, latency (ms), failures, server CPU."""

    round: int
    target: str
    path: str
    tool: str
    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    failures: int
    cpu_us_per_request: float | None


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``benchmarks/pgbouncer.py``; ``--smoke`` makes every count tiny."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/pgbouncer.py",
        description="dbscope through PgBouncer: throughput, and server connections per app.",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds in all")
    add_throughput_options(parser, FULL)
    parser.add_argument("--processes", type=int, default=4, help="app processes (4)")
    parser.add_argument("--spread", type=float, help="seconds of load on the processes (8)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results directory")
    at_least_one = ("rounds", "connections", "processes")
    args = parse_throughput_args(parser, argv, full=FULL, smoke=SMOKE, at_least_one=at_least_one)
    if args.smoke:
        args.processes = min(args.processes, 2)
    if args.duration <= 0 or args.spread <= 0:
        parser.error("--duration and --spread must be positive numbers of seconds")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; 0 when no request failed, 1 if some did, 2 if it could not run."""
    args = parse_args(argv)
    url = bench_settings().url
    if make_url(url).port not in (None, 5432):
        print(f"BENCH_DATABASE_URL must name the server on 5432, not {url}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        with bouncers():
            loadgen.run_async(data.ensure_world(url))
            environment = describe_environment()
            runs = throughput(url, args)
            spread = [connections(url, target, args) for target in (DIRECT, TRANSACTION)]
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        print(f"The benchmark could not run: {error}", file=sys.stderr)
        return 2
    result = {
        "command": _command(argv),
        "seconds": round(time.monotonic() - started),
        "environment": environment,
        "database": make_url(url).database,
        "settings": {
            "pool_size": POOL_SIZE,
            "rounds": args.rounds,
            "duration": args.duration,
            "connections": args.connections,
            "processes": args.processes,
            "spread": args.spread,
            "tool": runs[0].tool,
        },
        "throughput": summary(runs),
        "connections": spread,
    }
    name = "pgbouncer-smoke" if args.smoke else "pgbouncer"
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(args.output / f"{name}.md", result)
    print(f"wrote {args.output / name}.md and .json", flush=True)
    failed = sum(run.failures for run in runs) + sum(phase["failures"] for phase in spread)
    return 1 if failed else 0


@contextlib.contextmanager
def bouncers() -> Iterator[None]:
    """The two PgBouncers of tests/pgbouncer/bouncer, started if not running, and then
    stopped at the end."""
    if _bouncer("status").returncode == 0:
        yield
        return
    started = _bouncer("start")
    if started.returncode != 0:
        raise RuntimeError(f"{BOUNCER} start failed: {started.stdout}{started.stderr}")
    try:
        yield
    finally:
        _bouncer("stop")


def _bouncer(command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BOUNCER), command], capture_output=True, text=True, timeout=300, check=False
    )


# -- throughput ------------------------------------------------------------------------------


def throughput(url: str, args: argparse.Namespace) -> list[Run]:
    """Every target and path once per round, the targets in an order rotated each round."""
    settings = Settings(args.connections, args.duration, use_wrk=wrk.available())
    warmup = Settings(args.connections, min(1.0, args.duration), settings.use_wrk)
    logs = args.output / "logs"
    with contextlib.ExitStack() as stack:
        running = {
            target.key: stack.enter_context(
                servers.running(
                    f"pgbouncer-{target.key}",
                    "dbscope_pgbouncer",
                    env=target_env(url, target),
                    log=logs / f"pgbouncer-{target.key}.log",
                    core=SERVER_CORE,
                    fast=servers.fast_stack(),
                )
            )
            for target in TARGETS
        }
        for target in TARGETS:
            for path in PATHS:
                _load(running[target.key], target, path, warmup, 0)
        runs = []
        for number in range(1, args.rounds + 1):
            shift = number % len(TARGETS)
            for target in TARGETS[shift:] + TARGETS[:shift]:
                for path in PATHS:
                    runs.append(_load(running[target.key], target, path, settings, number))
                    print(f"  round {number}: {runs[-1]}", flush=True)
    return runs


def _load(
    server: servers.Server, target: Target, path: str, settings: Settings, number: int
) -> Run:
    measured = measure_load(server, path, settings)
    return Run(
        round=number,
        target=target.key,
        path=path,
        tool=measured.tool,
        requests_per_second=measured.requests_per_second,
        p50_ms=measured.p50_ms,
        p99_ms=measured.p99_ms,
        failures=measured.failures,
        cpu_us_per_request=measured.cpu_us_per_request,
    )


def summary(runs: list[Run]) -> dict[str, Any]:
    """Per target and path: median requests/s (min, max), latencies, failures; and each
    PgBouncer target over the server itself, per round."""
    cells: dict[str, Any] = {}
    for target in TARGETS:
        for path in PATHS:
            mine = [run for run in runs if run.target == target.key and run.path == path]
            cells[f"{target.key} {path}"] = {
                "target": target.label,
                "path": path,
                "requests_per_second": spread_of([run.requests_per_second for run in mine]),
                "p50_ms": median_of([run.p50_ms for run in mine]),
                "p99_ms": median_of([run.p99_ms for run in mine]),
                "cpu_us_per_request": median_of([run.cpu_us_per_request for run in mine]),
                "failures": sum(run.failures for run in mine),
            }
    rate = {(run.round, (run.target, run.path)): run.requests_per_second for run in runs}
    ratios = {}
    for target in (TRANSACTION, PREPARED):
        for path in PATHS:
            ratios[f"{target.key} {path}"] = {
                "target": target.label,
                "path": path,
                **round_ratios(rate, (target.key, path), (DIRECT.key, path)),
            }
    return {"cells": cells, "ratios": ratios, "runs": [asdict(run) for run in runs]}


def _command(argv: Sequence[str] | None) -> str:
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["benchmarks/pgbouncer.py", *arguments])
    given = os.environ.get("BENCH_DATABASE_URL")
    if given:  # where it ran, its password masked
        command = f"BENCH_DATABASE_URL={make_url(given).render_as_string()} {command}"
    return command
