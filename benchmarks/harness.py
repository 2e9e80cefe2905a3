"""The benchmark run: load the table, run every variant in rounds, overload, profile, report.

Variants run one at a time, each in its own uvicorn worker pinned to core 1, with the load
generator on core 0. Each round starts every variant once (in a rotated order) and runs each
load once on it, so that a noisy minute of the shared machine is spread over all variants
rather than falling on one; ratios to the blog pattern compare runs of the same round.

The rounds are in rounds.py, the smoke mode in smoke.py, what the servers get in config.py
and what ran where in environment.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from benchmarks import data, overload, report, servers, wrk
from benchmarks.catalog import BY_NAME, LOADS, Variant
from benchmarks.config import LOAD_CORE, POOL_SIZE, POOL_TIMEOUT, SERVER_CORE, base_env
from benchmarks.environment import describe_environment
from benchmarks.rounds import load_rounds
from benchmarks.smoke import smoke
from benchmarks.variants.common import bench_settings

ROOT: Final = servers.ROOT
RESULTS: Final = ROOT / "benchmarks" / "results"
CHART: Final = ROOT / "docs" / "benchmarks.png"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line of ``benchmarks/run.py``."""
    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="Benchmark dbscope against raw asyncpg, SQLAlchemy and other libraries.",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="run each variant for a few seconds with the Python load generator and check "
        "that it answers every endpoint (what the test suite runs)",
    )
    parser.add_argument("--variants", help="comma-separated variant names (default: all)")
    parser.add_argument("--runs", type=int, default=3, help="runs per load (rounds)")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per load")
    parser.add_argument("--overload-duration", type=float, default=10.0)
    parser.add_argument("--skip-load", action="store_true", help="skip the load runs")
    parser.add_argument("--skip-overload", action="store_true", help="skip the overload runs")
    parser.add_argument("--skip-profile", action="store_true", help="skip the profile")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help="directory for the JSON results"
    )
    args = parser.parse_args(argv)
    names = args.variants.split(",") if args.variants else list(BY_NAME)
    unknown = [name for name in names if name not in BY_NAME]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {', '.join(BY_NAME)}")
    args.selected = [BY_NAME[name] for name in names]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark (or its smoke mode); return the exit status."""
    args = parse_args(argv)
    settings = bench_settings()
    try:
        asyncio.run(data.ensure_world(settings.url))
    except (OSError, TimeoutError) as error:
        message = (
            f"PostgreSQL could not be reached ({error}); start it as DEVELOPERS.md says, or "
            "point BENCH_DATABASE_URL at a server (postgresql://user@127.0.0.1:5432/db)."
        )
        print(message, file=sys.stderr)
        return 2
    if args.smoke:
        return smoke(args.selected, args.duration, args.output)
    return full(args)


# -- the full run -----------------------------------------------------------------------------


def full(args: argparse.Namespace) -> int:
    """Load runs, overload, profile; results in ``args.output``, chart in docs/."""
    problems = _missing_tools(args)
    if problems:
        print("Cannot run the benchmark: " + "; ".join(problems), file=sys.stderr)
        return 2
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    environment = describe_environment()
    if not args.skip_load:
        load_runs(args, environment)
    if not args.skip_overload:
        results = overload_scenarios(args, output)
        _write_json(output / "overload.json", {"environment": environment, "results": results})
        (output / "overload.md").write_text(report.overload_markdown(results))
        print(report.overload_markdown(results), flush=True)
    if not args.skip_profile:
        from benchmarks import profiling

        profiling.run(output, base_env())
    print(f"done in {time.monotonic() - started:.0f} s; results in {output}", flush=True)
    return 0


def _missing_tools(args: argparse.Namespace) -> list[str]:
    """What the machine lacks for a full run, one phrase each; empty when nothing."""
    problems = []
    if not wrk.available() and not args.skip_load:
        problems.append("wrk is not installed (apt-get install -y wrk)")
    if not servers.fast_stack():
        problems.append("uvloop and httptools are not installed (pip install uvloop httptools)")
    if not servers.can_pin():
        problems.append("the run needs taskset and two cores to pin server and load apart")
    return problems


def load_runs(args: argparse.Namespace, environment: dict[str, Any]) -> None:
    """The load rounds of every selected variant that can run: load.json, load.md, the chart."""
    output: Path = args.output
    runnable, skipped = _runnable(args.selected)
    samples, failed = load_rounds(runnable, args)
    summaries = report.summarize(samples)
    print(report.text_table(summaries), flush=True)
    for name, reason in skipped.items():
        print(f"skipped {name}: {reason}", flush=True)
    for name, reason in failed.items():
        print(f"failures of {name}: {reason}", flush=True)
    _write_json(
        output / "load.json",
        {
            "environment": environment,
            "settings": _settings(args),
            "skipped": skipped,
            "failures": failed,
            "samples": [asdict(s) for s in samples],
            "summaries": [asdict(s) for s in summaries],
        },
    )
    chart = CHART if output == RESULTS else output / CHART.name
    report.chart(summaries, chart, _chart_title(environment))
    notes = [f"- {BY_NAME[name].label} did not run: {why}" for name, why in skipped.items()]
    notes += [f"- {BY_NAME[name].label} missed a round: {why}" for name, why in failed.items()]
    (output / "load.md").write_text(report.markdown_tables(summaries) + "\n".join(notes))


def _runnable(variants: list[Variant]) -> tuple[list[Variant], dict[str, str]]:
    """The variants whose libraries are installed, and why each of the others is not."""
    runnable, skipped = [], {}
    for variant in variants:
        reason = variant.missing()
        if reason:
            skipped[variant.name] = reason
        else:
            runnable.append(variant)
    return runnable, skipped


def overload_scenarios(args: argparse.Namespace, output: Path) -> list[dict[str, Any]]:
    """Each overload scenario in turn, the Python load generator pinned to core 0."""
    results = []
    with _affinity({LOAD_CORE}):
        for number, scenario in enumerate(overload.SCENARIOS):
            if BY_NAME[scenario.variant] not in args.selected:
                continue
            print(f"overload: {scenario.label}", flush=True)
            try:
                result = overload.run_scenario(
                    scenario,
                    duration=args.overload_duration,
                    log=output / "logs" / f"overload-{number}-{scenario.variant}.log",
                    server_core=SERVER_CORE,
                    fast=True,
                )
            except servers.ServerError as error:
                print(f"  {scenario.label} failed: {error}", file=sys.stderr, flush=True)
                continue
            results.append(result.as_json())
    return results


@contextlib.contextmanager
def _affinity(cores: set[int]) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


# -- what was written -------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "runs": args.runs,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "pool_timeout_s": POOL_TIMEOUT,
        "gc_threshold": os.environ.get("BENCH_GC_THRESHOLD"),  # None: CPython's 700
        "server_core": SERVER_CORE,
        "load_core": LOAD_CORE,
        "loads": [asdict(load) for load in LOADS],
    }


def _chart_title(environment: dict[str, Any]) -> str:
    versions = environment["versions"]
    return (
        f"One uvicorn worker (uvloop, httptools) per variant on 1 core; wrk on the other. "
        f"{environment['cpu']}, {environment['date']}\n"
        f"FastAPI {versions['fastapi']}, SQLAlchemy {versions['sqlalchemy']}, "
        f"asyncpg {versions['asyncpg']}, PostgreSQL {versions['postgresql']}; "
        f"pool {POOL_SIZE}; each ratio to the blog pattern run right beside it"
    )


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.write_text(json.dumps(content, indent=2, default=str) + "\n")
