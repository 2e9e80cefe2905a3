"""The replica benchmark's run: the pair ready, one server, the three measurements, the report.

One uvicorn worker serves ``benchmarks/variants/replica_app.py`` for the whole run, pinned to
core 1 while the clients, wrk and the load generator run on core 0 (as the load benchmark
does). The replica's apply delay is set back and the replica left running whatever happens;
the server is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from benchmarks import loadgen, replica_cluster, replica_failover, replica_report, servers, wrk
from benchmarks.config import LOAD_CORE, POOL_SIZE, POOL_TIMEOUT, SERVER_CORE
from benchmarks.environment import describe_environment
from benchmarks.harness import _affinity
from benchmarks.replica_cluster import ClusterError
from benchmarks.replica_pairs import Phase, run_phase
from benchmarks.replica_throughput import measure, summary
from benchmarks.throughput import Settings, add_throughput_options, parse_throughput_args

RESULTS: Final = servers.ROOT / "benchmarks" / "results"
# A phase's pairs are cut short after this many seconds, and said so.
PHASE_LIMIT: Final = {False: 600.0, True: 30.0}
FULL: Final = {"pairs": 10_000, "clients": 16, "rounds": 5, "duration": 3.0, "down": 5.0}
SMOKE: Final = {"pairs": 200, "clients": 4, "rounds": 1, "duration": 1.0, "down": 1.0}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``benchmarks/replicas.py``; ``--smoke`` makes every count tiny."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/replicas.py",
        description="Benchmark read replicas: stale reads, read throughput, failover of reads.",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny counts, a few seconds each")
    parser.add_argument("--pairs", type=int, help="write-then-read pairs per phase (10000)")
    parser.add_argument("--clients", type=int, help="concurrent pair clients (16)")
    parser.add_argument("--delay", type=int, default=50, help="replica apply delay, ms (50)")
    add_throughput_options(parser, FULL)
    parser.add_argument("--down", type=float, help="seconds the replica is stopped (5)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results directory")
    at_least_one = ("pairs", "clients", "rounds", "connections", "delay", "duration")
    args = parse_throughput_args(parser, argv, full=FULL, smoke=SMOKE, at_least_one=at_least_one)
    if args.down < 0:
        parser.error(f"--down must be 0 or more seconds, got {args.down}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or its smoke mode); 0 when every 'must' held, 1 if not, 2 if it
    could not run."""
    args = parse_args(argv)
    command = _command(argv)
    try:
        made = replica_cluster.ensure_pair()
        loadgen.run_async(replica_cluster.prepare())
    except (ClusterError, OSError) as error:
        print(f"The replica pair is not ready: {error}", file=sys.stderr)
        return 2
    os.environ["BENCH_DATABASE_URL"] = replica_cluster.PRIMARY_URL
    environment = describe_environment()
    started = time.monotonic()
    try:
        results = _measure(args)
    finally:
        problems = _leave_pair_as_found(made)
    results.update(
        command=command,
        smoke=args.smoke,
        seconds=round(time.monotonic() - started),
        environment=environment,
        settings=_settings(args),
        cleanup=problems,
    )
    return _report(results, args)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "BENCH_DATABASE_URL": replica_cluster.PRIMARY_URL,
        "BENCH_REPLICA_URL": replica_cluster.REPLICA_URL,
        "BENCH_POOL_SIZE": str(POOL_SIZE),
        "BENCH_MAX_OVERFLOW": "0",
        "BENCH_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    pinned = servers.can_pin()
    log = args.output / "logs" / f"replicas{'-smoke' if args.smoke else ''}.log"
    with (
        _affinity({LOAD_CORE} if pinned else os.sched_getaffinity(0)),
        servers.running(
            "replicas",
            "replica_app",
            env=env,
            log=log,
            core=SERVER_CORE if pinned else None,
            fast=servers.fast_stack(),
        ) as server,
    ):
        pairs = _pairs(server.port, args)
        print("throughput", flush=True)
        use_wrk = wrk.available() and not args.smoke
        settings = Settings(args.connections, args.duration, use_wrk)
        throughput = summary(measure(server, settings, rounds=args.rounds), settings)
        print("failover", flush=True)
        plan = replica_failover.Plan(
            connections=16 if not args.smoke else 4,
            before=1.0 if args.smoke else 3.0,
            down=args.down,
            limit=10.0 if args.smoke else 60.0,
        )
        failover = loadgen.run_async(replica_failover.run(server.port, plan))
        tracebacks = server.log_text().count("Traceback (most recent call last)")
    return {
        "pairs": pairs,
        "throughput": throughput,
        "failover": failover.as_json(),
        "server_tracebacks": tracebacks,
    }


def _pairs(port: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    phases = (
        Phase("no delay, read at once", 0, 0),
        Phase(f"apply delayed {args.delay} ms, read at once", args.delay, 0),
        Phase(
            f"apply delayed {args.delay} ms, read {2 * args.delay} ms after",
            args.delay,
            2 * args.delay,
        ),
    )
    results = []
    for number, phase in enumerate(phases):
        print(f"pairs: {phase.label}", flush=True)

        async def one(phase: Phase = phase, first: int = 1 + number * args.pairs) -> Any:
            async with replica_cluster.apply_delay(phase.delay_ms):
                return await run_phase(
                    port,
                    phase,
                    pairs=args.pairs,
                    clients=args.clients,
                    limit=PHASE_LIMIT[args.smoke],
                    first=first,
                )

        result = loadgen.run_async(one())
        print(f"  {json.dumps(result.as_json())}", flush=True)
        results.append(result.as_json())
    return results


def _leave_pair_as_found(made: bool) -> list[str]:
    """The apply delay set back, the replica running, the pair stopped if the run made it;
    what could not be done, if anything."""
    problems = []
    if made:
        try:
            replica_cluster.script("stop")
        except ClusterError as error:
            problems.append(str(error))
        return problems
    if replica_cluster.status() is not None:
        try:
            replica_cluster.script("start-replica")
        except ClusterError as error:
            problems.append(str(error))
    reset = replica_cluster.reset_apply_delay()
    if reset is not None:
        problems.append(reset)
    return problems


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "primary_port": replica_cluster.PRIMARY_PORT,
        "replica_port": replica_cluster.REPLICA_PORT,
        "pairs_per_phase": args.pairs,
        "pair_clients": args.clients,
        "apply_delay_ms": args.delay,
        "throughput_rounds": args.rounds,
        "throughput_seconds": args.duration,
        "throughput_connections": args.connections,
        "replica_down_seconds": args.down,
        "pool_size": POOL_SIZE,
        "pool_timeout_s": POOL_TIMEOUT,
        "replica_wait_s": 0.05,
        "replica_check_interval_s": 1.0,
        "server_core": SERVER_CORE if servers.can_pin() else None,
        "load_core": LOAD_CORE if servers.can_pin() else None,
    }


def _command(argv: Sequence[str] | None) -> str:
    """The command line that ran, with the pair's variables if set: what reruns it."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    venv = Path(sys.prefix)
    python = (
        f"{venv.relative_to(servers.ROOT)}/bin/python"
        if venv.is_relative_to(servers.ROOT)
        else "python"
    )
    pair = [
        f"{name}={os.environ[name]}"
        for name in ("DBSCOPE_REPLICAS_NAME", "DBSCOPE_REPLICAS_PORT")
        if name in os.environ
    ]
    return shlex.join([*pair, python, "benchmarks/replicas.py", *arguments])


def _report(results: dict[str, Any], args: argparse.Namespace) -> int:
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    name = "replicas-smoke" if args.smoke else "replicas"
    (output / f"{name}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    markdown = replica_report.markdown(results)
    if not args.smoke:
        (output / f"{name}.md").write_text(markdown)
    print(markdown, flush=True)
    broken = replica_report.broken_promises(results)
    for promise in broken:
        print(f"FAILED: {promise}", file=sys.stderr)
    return 1 if broken else 0
