"""The benchmark run: load the table, run every variant in rounds, overload, profile, report.

Variants run one at a time, each in its own uvicorn worker pinned to core 1, with the load
generator on core 0. Each round starts every variant once (in a rotated order) and runs each
load once on it, so that a noisy minute of the shared machine is spread over all variants
rather than falling on one; ratios to the blog pattern compare runs of the same round.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Final

from benchmarks import data, loadgen, overload, report, servers, wrk
from benchmarks.catalog import BASELINE, BY_NAME, ENDPOINTS, LOADS, Load, Variant
from benchmarks.variants.common import bench_settings

ROOT: Final = servers.ROOT
RESULTS: Final = ROOT / "benchmarks" / "results"
CHART: Final = ROOT / "docs" / "benchmarks.png"
SERVER_CORE: Final = 1
LOAD_CORE: Final = 0
POOL_SIZE: Final = 16
# Every variant gets SQLAlchemy's own default, so that none waits longer than another.
POOL_TIMEOUT: Final = 30.0
DISTRIBUTIONS: Final = (
    "fastapi", "starlette", "pydantic", "sqlalchemy", "asyncpg", "greenlet", "uvicorn",
    "uvloop", "httptools", "dbscope", "advanced-alchemy", "fastapi-sqla",
    "fastapi-async-sqlalchemy", "matplotlib", "pyinstrument",
)  # fmt: skip


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


def base_env(pool_size: int = POOL_SIZE) -> dict[str, str]:
    """The settings every variant gets: the same URL, pool and timeout."""
    settings = bench_settings()
    return {
        "BENCH_DATABASE_URL": settings.url,
        "BENCH_POOL_SIZE": str(pool_size),
        "BENCH_MAX_OVERFLOW": "0",
        "BENCH_POOL_TIMEOUT": str(POOL_TIMEOUT),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


# -- smoke ------------------------------------------------------------------------------------


def smoke(variants: list[Variant], duration: float, output: Path) -> int:
    """Start each variant, check its four endpoints, load /db briefly; 1 if any failed."""
    results: dict[str, dict[str, Any]] = {}
    for variant in variants:
        results[variant.name] = _smoke_one(variant, duration, output)
        print(f"{variant.name}: {json.dumps(results[variant.name])}", flush=True)
    output.mkdir(parents=True, exist_ok=True)
    (output / "smoke.json").write_text(json.dumps(results, indent=2) + "\n")
    failed = [name for name, result in results.items() if not result["ok"]]
    if failed:
        print(f"smoke failed for: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def _smoke_one(variant: Variant, duration: float, output: Path) -> dict[str, Any]:
    missing = variant.missing()
    if missing:
        return {"ok": False, "skipped": missing}
    log = output / "logs" / f"smoke-{variant.name}.log"
    core = SERVER_CORE if servers.can_pin() else None
    try:
        with servers.running(
            variant.name, variant.name, env=base_env(4), log=log, core=core, fast=False
        ) as server:
            statuses = {
                path: servers.get_status(server.port, path, timeout=10) for path in ENDPOINTS
            }
            stored = _updates_are_stored(server.port)
            load = loadgen.run_async(
                loadgen.run_load(server.port, "/db", connections=8, duration=duration)
            )
    except servers.ServerError as error:
        return {"ok": False, "error": str(error)}
    counts = {str(code): n for code, n in sorted(load.statuses.items())}
    ok = all(status == 200 for status in statuses.values()) and stored
    ok = ok and len(load.responses) > 0 and set(counts) == {"200"}
    return {
        "ok": ok,
        "endpoints": statuses,
        "updates_stored": stored,
        "requests": len(load.responses),
        "statuses": counts,
        "transport_errors": load.transport_errors,
    }


def _updates_are_stored(port: int) -> bool:
    """Whether GET /updates really commits: its new numbers are in the table within 1 s.

    A variant that forgot to commit would look fast for the wrong reason. (Some libraries
    commit after the response is sent, hence the second of grace.)
    """
    status, body = servers.get(port, "/updates?q=5", timeout=10)
    if status != 200:
        return False
    sent = {row["id"]: row["randomNumber"] for row in json.loads(body)}
    url = bench_settings().url
    deadline = time.monotonic() + 1.0
    while True:
        if asyncio.run(data.stored_numbers(url, list(sent))) == sent:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


# -- the full run -----------------------------------------------------------------------------


def full(args: argparse.Namespace) -> int:
    """Load runs, overload, profile; results in ``args.output``, chart in docs/."""
    problems = []
    if not wrk.available() and not args.skip_load:
        problems.append("wrk is not installed (apt-get install -y wrk)")
    if not servers.fast_stack():
        problems.append("uvloop and httptools are not installed (pip install uvloop httptools)")
    if not servers.can_pin():
        problems.append("the run needs taskset and two cores to pin server and load apart")
    if problems:
        print("Cannot run the benchmark: " + "; ".join(problems), file=sys.stderr)
        return 2
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    environment = describe_environment()
    runnable, skipped = [], {}
    for variant in args.selected:
        reason = variant.missing()
        if reason:
            skipped[variant.name] = reason
        else:
            runnable.append(variant)
    if not args.skip_load:
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


def load_rounds(
    variants: list[Variant], args: argparse.Namespace
) -> tuple[list[report.Sample], dict[str, str]]:
    """Every variant, every load, ``args.runs`` rounds, each run paired with a blog run.

    In each round the blog pattern's server stays up beside the variant under test, and
    every run of a variant has a run of the blog pattern on the same load right before or
    after it (alternately), so that each ratio compares two runs seconds apart. A variant
    that fails in a round misses that round only (the reason is returned); without the blog
    pattern there are no ratios.
    """
    samples: list[report.Sample] = []
    failed: dict[str, str] = {}
    others = [variant for variant in variants if variant.name != BASELINE]
    baseline = BY_NAME[BASELINE] if any(v.name == BASELINE for v in variants) else None
    pairs = itertools.count()
    for round_ in range(args.runs):
        shift = round_ % len(others) if others else 0
        with contextlib.ExitStack() as stack:
            reference = None
            if baseline is not None:
                try:
                    reference = stack.enter_context(
                        _serving(baseline, args, round_, every_load=True)
                    )
                except servers.ServerError as error:
                    _note(failed, BASELINE, round_, error)
            for variant in others[shift:] + others[:shift]:
                print(f"round {round_ + 1}/{args.runs}: {variant.label}", flush=True)
                try:
                    with _serving(variant, args, round_) as server:
                        for index, load in enumerate(LOADS):
                            pair = next(pairs)
                            runs = [(variant, server)]
                            if baseline is not None and reference is not None:
                                runs.append((baseline, reference))
                            if (round_ + index) % 2:
                                runs.reverse()
                            for who, where in runs:
                                # The reference server stays up all round, warm already.
                                warm = who is variant
                                sample = _measure(who, where, load, round_, pair, args, warm)
                                samples.append(sample)
                except (servers.ServerError, subprocess.SubprocessError, ValueError) as error:
                    _note(failed, variant.name, round_, error)
    if not any(sample.variant == BASELINE for sample in samples):
        print("the blog pattern did not run: no ratios this time", file=sys.stderr)
    return samples, failed


def _note(failed: dict[str, str], name: str, round_: int, error: Exception) -> None:
    print(f"  {name} failed in round {round_ + 1}: {error}", file=sys.stderr, flush=True)
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    note = f"round {round_ + 1}: {first_line} (see the log in results/logs)"
    failed[name] = f"{failed[name]}; {note}" if name in failed else note


@contextlib.contextmanager
def _serving(
    variant: Variant, args: argparse.Namespace, round_: int, *, every_load: bool = False
) -> Iterator[servers.Server]:
    """A variant's server, warmed up: its pool filled and its statements prepared."""
    log = args.output / "logs" / f"{variant.name}-round{round_ + 1}.log"
    with servers.running(
        variant.label, variant.name, env=base_env(), log=log, core=SERVER_CORE, fast=True
    ) as server:
        wrk.run(server.port, "/db", connections=64, duration=2, core=LOAD_CORE)
        for load in LOADS if every_load and args.warmup > 0 else ():
            wrk.run(
                server.port, load.path, connections=load.connections,
                duration=args.warmup, core=LOAD_CORE,
            )  # fmt: skip
        yield server


def _measure(
    variant: Variant,
    server: servers.Server,
    load: Load,
    round_: int,
    pair: int,
    args: argparse.Namespace,
    warm: bool,
) -> report.Sample:
    if warm and args.warmup > 0:
        wrk.run(
            server.port, load.path, connections=load.connections,
            duration=args.warmup, core=LOAD_CORE,
        )  # fmt: skip
    result = wrk.run(
        server.port, load.path, connections=load.connections,
        duration=args.duration, core=LOAD_CORE,
    )  # fmt: skip
    errors = result.non_2xx + result.socket_errors
    print(
        f"  {variant.name:<16} {load.key:<11} {result.requests_per_second:>9,.0f} req/s  "
        f"p50 {result.p50_ms:.1f} ms  p99 {result.p99_ms:.1f} ms"
        + (f"  errors {errors}" if errors else ""),
        flush=True,
    )
    return report.Sample(
        round=round_,
        pair=pair,
        variant=variant.name,
        load=load.key,
        requests=result.requests,
        requests_per_second=result.requests_per_second,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        errors=errors,
    )


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


# -- what ran where ---------------------------------------------------------------------------


def describe_environment() -> dict[str, Any]:
    """The machine, the versions and the commit, written beside every result."""
    versions: dict[str, str | None] = {}
    for name in DISTRIBUTIONS:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    versions["postgresql"] = asyncio.run(data.server_version(bench_settings().url))
    versions["wrk"] = _first_line(["wrk", "--version"])
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    dbscope_path = _first_line(
        [sys.executable, "-c", "import dbscope; print(dbscope.__file__)"], env=os.environ
    )
    return {
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        "cpu": cpu,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "load_average": os.getloadavg(),
        "versions": versions,
        "commit": _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"]),
        "src_modified": bool(
            _first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
        ),
        "dbscope_imported_from": dbscope_path,
    }


def _first_line(command: list[str], env: Any = None) -> str | None:
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=30, check=False, env=env
        )
    except (OSError, subprocess.SubprocessError):
        return None
    text = (completed.stdout or completed.stderr).strip()
    return text.splitlines()[0] if text else None


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "runs": args.runs,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "pool_size": POOL_SIZE,
        "max_overflow": 0,
        "pool_timeout_s": POOL_TIMEOUT,
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
