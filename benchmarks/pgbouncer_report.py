"""benchmarks/results/pgbouncer.md from a run's results (benchmarks/pgbouncer_harness.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_report(path: Path, result: dict[str, Any]) -> None:
    """Write the run's tables and what they rest on to ``path``."""
    path.write_text("\n".join(_lines(result)) + "\n")


def _lines(result: dict[str, Any]) -> list[str]:
    environment, settings = result["environment"], result["settings"]
    versions = environment["versions"]
    load = ", ".join(str(round(value, 1)) for value in environment["load_average"])
    commit = environment["commit"] + (
        " (with uncommitted changes in src/)" if environment["src_modified"] else ""
    )
    lines = [
        "# dbscope through PgBouncer, measured",
        "",
        f"Made by `{result['command']}` on {environment['date']}, in {result['seconds']} s.",
        "",
        f"{environment['cpu']}, {environment['nproc']} cores, load averages {load} at the start. "
        "**The machine is shared with other work: read the ratios and counts, not the "
        "absolute requests/s.** "
        f"Python {versions['python']}, SQLAlchemy {versions['sqlalchemy']}, asyncpg "
        f"{versions['asyncpg']}, uvicorn {versions['uvicorn']} (uvloop "
        f"{versions['uvloop'] or 'not installed'}), PostgreSQL {versions['postgresql']}, "
        f"{(versions['wrk'] or 'no wrk').split(' [')[0]}; dbscope at `{commit}`.",
        "",
        "PgBouncer from `tests/pgbouncer/bouncer`, both `pool_mode = transaction` with "
        "`default_pool_size = 10`, in front of the server on 127.0.0.1:5432: on 6432 with "
        "`max_prepared_statements = 0`, on 6433 with 200. Every app is "
        "`benchmarks/variants/dbscope_pgbouncer.py` (dbscope's `Depends(db.session)`, asyncpg) "
        f"with `pool_size={settings['pool_size']}, max_overflow=0`, on database "
        f"`{result['database']}`.",
        "",
        "## Throughput",
        "",
        f"{settings['rounds']} rounds of {settings['duration']} s runs at "
        f"{settings['connections']} connections with {settings['tool']}, one uvicorn worker per "
        "target on core 1, the load on core 0, the targets in an order rotated each round; "
        "median requests/s (min-max), latency percentiles and the server's CPU per request "
        "(median over the runs).",
        "",
        "| target | path | req/s | p50 ms | p99 ms | server CPU µs/request | failed |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for cell in result["throughput"]["cells"].values():
        rate = cell["requests_per_second"]
        lines.append(
            f"| {cell['target']} | `{cell['path']}` | {_number(rate['median'])} "
            f"({_number(rate['min'])}-{_number(rate['max'])}) | {cell['p50_ms']} | "
            f"{cell['p99_ms']} | {cell['cpu_us_per_request']} | {cell['failures']} |"
        )
    lines += [
        "",
        "Through PgBouncer over the server itself, in requests/s, per round (median, min-max):",
        "",
        "| target | path | ratio |",
        "|---|---|---:|",
    ]
    for ratio in result["throughput"]["ratios"].values():
        lines.append(
            f"| {ratio['target']} | `{ratio['path']}` | {ratio['median']}x "
            f"({ratio['min']}-{ratio['max']}) |"
        )
    lines += [
        "",
        "## Server connections of several app processes",
        "",
        f"{settings['processes']} uvicorn processes, each with a pool of {settings['pool_size']}, "
        f"`/db` loaded on all at once for {settings['spread']} s "
        f"({max(1, settings['connections'] // settings['processes'])} clients each, "
        "benchmarks/loadgen.py); the database's client backends read from `pg_stat_activity` "
        "every 100 ms (PgBouncer's idle server connections to it closed first, by `RECONNECT`).",
        "",
        "| path | client connections | server connections, peak | median | busy at once, peak "
        "| req/s (all processes) | failed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for phase in result["connections"]:
        lines.append(
            f"| {phase['target']} | {phase['client_connections']} | "
            f"**{phase['server_connections_peak']}** | {phase['server_connections_median']} | "
            f"{phase['busy_peak']} | {_number(phase['requests_per_second'])} | "
            f"{phase['failures']} |"
        )
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
