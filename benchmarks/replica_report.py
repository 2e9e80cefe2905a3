"""The replica benchmark's figures as Markdown, and the promises a run broke."""

from __future__ import annotations

from typing import Any, Final

# The throughput ratios the report shows: what over what, and their key in the summary.
RATIOS: Final = (
    ("routed to the replica / the primary-only path", "replica_vs_primary"),
    ("a replayed token / no token (the token check)", "token_vs_no_token"),
    ("routed to the replica / the replica's server without routing", "routed_vs_direct"),
    ("the replica's server without routing / the primary-only path", "direct_vs_primary"),
)


def broken_promises(results: dict[str, Any]) -> list[str]:
    """What must hold and did not: stale reads, failed requests, 500s, the replica unused."""
    broken = []
    for phase in results["pairs"]:
        label = phase["label"]
        if phase["stale"]:
            broken.append(f"{phase['stale']} stale reads ({label})")
        if phase["pairs"] != phase["asked"]:
            broken.append(f"{phase['pairs']} of {phase['asked']} pairs completed ({label})")
    if not any(phase["on_replica"] for phase in results["pairs"]):
        broken.append("no read was served by the replica: it did not stream, or was not used")
    loads = results["throughput"]["loads"]
    for key, load in loads.items():
        if load["failures"]:
            broken.append(f"{load['failures']} failed requests in the throughput runs ({key})")
    if not loads["token"]["served_by_replica"]:
        broken.append("no read with a replayed token was served by the replica")
    if results["failover"]["errors_500"]:
        broken.append(f"{results['failover']['errors_500']} answers of 500 during the failover")
    broken += [f"cleanup: {problem}" for problem in results["cleanup"]]
    return broken


def markdown(results: dict[str, Any]) -> str:
    """The whole report: how it ran, then each measurement's table."""
    return "\n".join(
        [
            "# Read replicas, measured",
            "",
            *_setup(results),
            "",
            *_pairs(results["pairs"]),
            "",
            *_throughput(results["throughput"]),
            "",
            *_failover(results["failover"], results["server_tracebacks"]),
            "",
        ]
    )


def _setup(results: dict[str, Any]) -> list[str]:
    env = results["environment"]
    versions = env["versions"]
    settings = results["settings"]
    modified = " (with uncommitted changes in src/)" if env["src_modified"] else ""
    return [
        f"Made by `{results['command']}` on {env['date']}, in {results['seconds']} s"
        f"{' (smoke mode: tiny counts, not figures)' if results['smoke'] else ''}.",
        "",
        f"{env['cpu']}, {env['nproc']} cores, load averages "
        f"{', '.join(f'{x:.1f}' for x in env['load_average'])} at the start. "
        "**The machine is shared with other work (test runs on the same PostgreSQL servers): "
        "read the ratios and counts, not the absolute requests/s.** Python "
        f"{versions['python']}, FastAPI {versions['fastapi']}, SQLAlchemy "
        f"{versions['sqlalchemy']}, asyncpg {versions['asyncpg']}, uvicorn {versions['uvicorn']}"
        f" (uvloop {versions['uvloop'] or 'not installed'}), PostgreSQL {versions['postgresql']}"
        f", {_wrk(versions['wrk'])}; dbscope at `{env['commit']}`{modified}.",
        "",
        f"A primary (127.0.0.1:{settings['primary_port']}) and a streaming replica of it "
        f"(:{settings['replica_port']}) from `tests/replicas/cluster`; one uvicorn worker "
        f"(core {settings['server_core']}), clients on core {settings['load_core']}; each "
        f"Database with `pool_size={settings['pool_size']}, max_overflow=0`, "
        f"`replica_wait={settings['replica_wait_s']}` s and "
        f"`replica_check_interval={settings['replica_check_interval_s']}` s (the defaults).",
    ]


def _wrk(version: str | None) -> str:
    """wrk's version as ``wrk --version`` gives it, without the copyright."""
    return (version or "wrk not installed").split(" [", 1)[0]


def _pairs(phases: list[dict[str, Any]]) -> list[str]:
    clients = phases[0]["clients"] if phases else 0
    lines = [
        "## Stale reads: write-then-read pairs across requests",
        "",
        f"{clients} clients, each its own `httpx` client: `POST /write` (on the primary) then "
        "`GET /read` (`db.read_session`); half carry the write token in their cookie jar, "
        "half echo the response header. Stale: the read returned an older number. "
        "Where each read ran: `pg_is_in_recovery()` in its own transaction; why the others "
        "ran on the primary: `db.stats().fallbacks`.",
        "",
        "| phase | pairs | stale | read on the replica | on the primary | primary, why "
        "| cookie / header pairs (stale) | failed | read p50 / p99 ms | seconds |",
        "|---|---:|---:|---:|---:|---|---|---|---:|---:|",
    ]
    for p in phases:
        why = ", ".join(f"{reason} {n}" for reason, n in p["fallbacks"].items()) or "-"
        modes = " / ".join(
            f"{m['pairs']} ({m['stale']})" for m in (p["by_mode"]["cookie"], p["by_mode"]["header"])
        )
        failed = ", ".join(f"{k}: {v}" for k, v in p["failed"].items()) or "0"
        lines.append(
            f"| {p['label']} | {p['pairs']:,} | {p['stale']} | {p['on_replica']:,} "
            f"({p['replica_share']:.1%}) | {p['on_primary']:,} | {why} | {modes} | {failed} "
            f"| {p['read_p50_ms']} / {p['read_p99_ms']} | {p['seconds']} |"
        )
    return lines


def _rate(spread: dict[str, float | None], digits: int = 0, suffix: str = "") -> str:
    if spread["median"] is None:
        return "-"
    return (
        f"{spread['median']:,.{digits}f}{suffix} "
        f"({spread['min']:,.{digits}f}-{spread['max']:,.{digits}f})"
    )


def _throughput(summary: dict[str, Any]) -> list[str]:
    runs = summary["runs"]
    tool = runs[0]["tool"] if runs else "-"
    rounds = len({run["round"] for run in runs})
    lines = [
        "## Read throughput of `/db`",
        "",
        f"{rounds} round{'s' if rounds != 1 else ''} of {summary['seconds']} s runs at "
        f"{summary['connections']} connections, each load once per round in an order rotated "
        f"each round, with {tool}; median requests/s (min-max), latency percentiles (median "
        "over the runs).",
        "",
        "| load | req/s | p50 ms | p99 ms | server CPU µs/request | failed "
        "| served by the replica | fell back |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for load in summary["loads"].values():
        lines.append(
            f"| {load['label']} | {_rate(load['requests_per_second'])} | {load['p50_ms']} "
            f"| {load['p99_ms']} | {load['cpu_us_per_request']} | {load['failures']} "
            f"| {load['served_by_replica']:,} | {load['fallbacks']} |"
        )
    lines += [
        "",
        "Ratios of runs of the same round (median, min-max), in requests/s and in the uvicorn "
        "process's CPU time per request (user + system, from `/proc`: unlike requests/s, it "
        "leaves out the time the server waits for a core the machine's other work holds):",
        "",
        "| ratio | requests/s | CPU per request |",
        "|---|---:|---:|",
    ]
    for label, key in RATIOS:
        lines.append(
            f"| {label} | {_rate(summary[key], 3, 'x')} | {_rate(summary['cpu_' + key], 3, 'x')} |"
        )
    return lines


def _failover(result: dict[str, Any], tracebacks: int) -> list[str]:
    statuses = ", ".join(f"{code}: {n:,}" for code, n in result["statuses"].items())
    back = result["reads_back_after"]
    windows = [
        f"| {name} | {', '.join(f'{c}: {n:,}' for c, n in counts.items()) or '-'} |"
        for name, counts in result["by_window"].items()
    ]
    states = ", ".join(f"{state} at {when:+.2f} s" for when, state in result["states"])
    fallbacks = ", ".join(f"{reason} {n:,}" for reason, n in result["fallbacks"].items()) or "-"
    return [
        "## Failover of reads",
        "",
        f"`/db` loaded by {result['connections']} clients for {result['load_seconds']} s; the "
        f"replica stopped (`tests/replicas/cluster stop-replica`, {result['stop_took']} s) and "
        f"started again {result['down_seconds']} s later (`start-replica`, which waits until it "
        f"streams: {result['start_took']} s).",
        "",
        f"- answers: {statuses}; **500: {result['errors_500']}**; no answer: "
        f"{result['transport_errors']}; server tracebacks: {tracebacks}",
        "- reads back on the replica "
        + (
            f"**{back} s after its start** (its served count moving again)"
            if back is not None
            else "**not within the wait**"
        ),
        f"- reads the replica served while down: {result['served_while_down']}; after its "
        f"start: {result['served_after_back']:,}; reads on the primary instead: {fallbacks}",
        f"- the replica's state as `db.stats()` showed it (from its start): {states}",
        "",
        "Each answer counted by when its request was sent (a read in flight at the stop falls "
        "before it):",
        "",
        "| window | answers |",
        "|---|---|",
        *windows,
    ]
