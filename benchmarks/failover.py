"""Benchmark primary failover: ``python benchmarks/failover.py`` (as root; about 10 minutes).

On the two-node Patroni cluster of ``tests/patroni/cluster`` (started here if it is not
running, and then stopped at the end), two measurements, written to
benchmarks/results/failover.md and summed up in docs/failover.md:

1. The bank workload (tests/bank_failover.py) through a switchover and then a crash of the
   leader (``kill -9``), with Patroni's ``synchronous_mode`` on and off, through asyncpg and
   psycopg: seconds of 503s around each event, time from the new primary serving to the
   first transfer answered 2xx, answers of 500, and acknowledged transfers lost.
2. What a commit costs at each ``synchronous_commit`` level a unit can ask for, with the
   synchronous standby in place: single-row INSERT units one after another, the levels in
   turn, round after round.

Options: ``--drivers asyncpg,psycopg``, ``--modes sync,async``, ``--lags 0,1`` (seconds the
standby is held behind before the crash, the WAL sender stopped), ``--commits N`` (per level
and round), ``--rounds N``, ``--output PATH``. Bounded: every wait has a deadline, and the
run stops itself.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import text  # noqa: E402 - after the repository root is on the path
from tests.bank_failover import CLIENTS, Outcome, run  # noqa: E402
from tests.patroni_cluster import (  # noqa: E402
    PatroniCluster,
    alone,
    ensure_cluster,
    healthy,
    release,
)

from dbscope import Database  # noqa: E402
from dbscope._dialects import SynchronousCommit  # noqa: E402

LEVELS: tuple[SynchronousCommit, ...] = ("remote_apply", "on", "remote_write", "local", "off")
OUTPUT = ROOT / "benchmarks" / "results" / "failover.md"


@dataclass
class FailoverRow:
    """One workload run, summed up."""

    mode: str
    lag: float
    driver: str
    outcome: Outcome
    seconds: float


async def failover_runs(
    cluster: PatroniCluster, modes: list[str], lags: list[float], drivers: list[str]
) -> list[FailoverRow]:
    """The bank through a switchover and a crash, once per mode, lag and driver."""
    rows = []
    for mode in modes:
        for lag in lags:
            for driver in drivers:
                began = time.monotonic()
                with alone():
                    async with healthy(cluster, synchronous=mode == "sync"):
                        outcome = await run(cluster, driver, lag=lag)
                seconds = time.monotonic() - began
                rows.append(FailoverRow(mode, lag, driver, outcome, seconds))
                print(summary(rows[-1]), flush=True)
    return rows


async def commit_costs(
    cluster: PatroniCluster, commits: int, rounds: int
) -> dict[str, list[float]]:
    """Milliseconds per single-row INSERT unit at each synchronous_commit level."""
    samples: dict[str, list[float]] = {level: [] for level in LEVELS}
    with alone():
        async with healthy(cluster, synchronous=True), Database(cluster.url()) as db:
            async with db.transaction() as session:
                await session.execute(text("DROP TABLE IF EXISTS bench_commits"))
                await session.execute(
                    text("CREATE TABLE bench_commits (id bigserial PRIMARY KEY, note text)")
                )
            insert = text("INSERT INTO bench_commits (note) VALUES ('x')")
            for round_number in range(rounds):
                order = LEVELS[round_number % len(LEVELS) :] + LEVELS[: round_number % len(LEVELS)]
                for level in order:
                    for _ in range(commits):
                        started = time.perf_counter()
                        async with db.transaction(synchronous_commit=level) as session:
                            await session.execute(insert)
                        samples[level].append((time.perf_counter() - started) * 1000)
            async with db.transaction() as session:
                await session.execute(text("DROP TABLE bench_commits"))
    return samples


def summary(row: FailoverRow) -> str:
    """One line per run, for the terminal."""
    outcome = row.outcome
    parts = [f"{row.mode:5} lag {row.lag:g} s {row.driver:8}"]
    for event in outcome.events:
        back = outcome.first_write_after_promotion(event)
        parts.append(
            f"{event.name}: 503s {outcome.unavailable_seconds(event):.2f} s, "
            f"write {1000 * back:.0f} ms after promotion"
            if back is not None
            else event.name
        )
    parts.append(
        f"answers {dict(outcome.statuses)}, lost {len(outcome.lost)}, "
        f"500s {outcome.server_errors}, mismatched {len(outcome.mismatched_accounts())}"
    )
    return "; ".join(parts)


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def failover_table(rows: list[FailoverRow]) -> list[str]:
    """The failover runs as a Markdown table."""
    lines = [
        "| synchronous_mode | standby behind at the crash | driver | "
        "transfers answered 201 / 409 / 503 / other | 500s | "
        "acknowledged lost | 503 but committed | accounts off the ledger | total unchanged | "
        "switchover: 503s s | switchover: first 201 after promotion ms | crash: 503s s | "
        "crash: first 201 after promotion ms |",
        "|---|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        outcome = row.outcome
        statuses = outcome.statuses
        other = sum(n for status, n in statuses.items() if status not in (201, 409, 503))
        cells = [
            "on" if row.mode == "sync" else "off",
            f"{row.lag:g} s",
            row.driver,
            f"{statuses[201]:,} / {statuses[409]} / {statuses[503]} / {other}",
            str(outcome.server_errors),
            f"**{len(outcome.lost)}**",
            str(len(outcome.errors_applied)),
            str(len(outcome.mismatched_accounts())),
            "yes" if sum(outcome.balances.values()) == outcome.total else "**no**",
        ]
        for event in outcome.events:
            back = outcome.first_write_after_promotion(event)
            cells.append(f"{outcome.unavailable_seconds(event):.2f}")
            cells.append("-" if back is None else f"{1000 * back:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def commit_table(samples: dict[str, list[float]]) -> list[str]:
    """The commit costs as a Markdown table, against the server's default ``on``."""
    base = statistics.median(samples["on"])
    lines = [
        "| synchronous_commit | units | p50 ms | p90 ms | p99 ms | p50 against `on` |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for level in LEVELS:
        values = samples[level]
        p50 = statistics.median(values)
        lines.append(
            f"| `{level}` | {len(values):,} | {p50:.2f} | {_percentile(values, 0.9):.2f} | "
            f"{_percentile(values, 0.99):.2f} | {p50 / base:.2f}x |"
        )
    return lines


def _environment() -> str:
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],  # noqa: S607 - git on PATH
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    load = ", ".join(f"{value:.1f}" for value in _load())
    return (
        f"{platform.python_version()} on {platform.machine()}, load averages {load} at the "
        f"start; dbscope at `{commit}`."
    )


def _load() -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return ()


def report(
    rows: list[FailoverRow], samples: dict[str, list[float]], command: str, seconds: float
) -> str:
    """The results file."""
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join(
        [
            "# Primary failover, measured",
            "",
            f"Made by `{command}` on {when}, in {seconds:.0f} s. Python {_environment()}",
            "",
            "A two-node Patroni 4.1 cluster of PostgreSQL 15 from `tests/patroni/cluster` "
            "(ttl 20 s, loop_wait 2 s) on 127.0.0.1:5440/5441; the example bank "
            f"(examples/bank) under one uvicorn worker on the multi-host URL "
            "(`target_session_attrs=read-write`), default pool; "
            f"{CLIENTS} clients each sending one transfer after another (a new transfer id "
            "each time; 50 ms pause after an error). Each run: a switchover, then, once the "
            "old leader streams again (as synchronous standby in that mode), `kill -9` of the "
            "leader's whole node (every process frozen at one instant, then killed), its standby "
            "first held behind for the given seconds (its WAL sender stopped, as over a slow "
            "link). 503s: from the first to the last transfer sent "
            "during the event that got no 2xx. Promotion: when Patroni's `/primary` check "
            "first answered 200 on the new leader (polled every 50 ms).",
            "",
            "## Switchover and crash under the bank workload",
            "",
            *failover_table(rows),
            "",
            "Lost: answered 201, missing from the new primary's ledger. 503 but committed: "
            "the commit reached the server, its answer was lost with the connection; a client "
            "retrying with the same transfer id gets 409, never a second transfer. Accounts "
            "off the ledger: a balance that differs from what the ledger's transfers make it "
            "(a half-applied transfer).",
            "",
            "## What a commit costs at each `synchronous_commit`",
            "",
            "Single-row INSERT units (`db.transaction(synchronous_commit=...)`) one after "
            "another through asyncpg, with the synchronous standby connected; the levels in "
            "turn, in rounds, the order rotated each round.",
            "",
            *commit_table(samples),
            "",
        ]
    )


async def main_async(args: argparse.Namespace) -> int:
    """Run what the options ask for, and write the report."""
    began = time.monotonic()
    cluster = ensure_cluster()
    try:
        lags = [float(lag) for lag in args.lags.split(",")]
        rows = await failover_runs(cluster, args.modes.split(","), lags, args.drivers.split(","))
        samples = await commit_costs(cluster, args.commits, args.rounds)
    finally:
        release(cluster)
    for line in commit_table(samples):
        print(line)
    command = "python benchmarks/failover.py " + " ".join(sys.argv[1:])
    args.output.write_text(report(rows, samples, command.strip(), time.monotonic() - began))
    print(f"written: {args.output}")
    return 0


def main() -> int:
    """``python benchmarks/failover.py [options]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drivers", default="asyncpg,psycopg")
    parser.add_argument("--modes", default="sync,async")
    parser.add_argument("--lags", default="0,1", help="seconds the standby is behind")
    parser.add_argument("--commits", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    return asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    raise SystemExit(main())
