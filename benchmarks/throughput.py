"""Throughput runs as the replica and PgBouncer benchmarks make them, and their figures.

A load on one path of a server, sent by wrk or by the Python load generator, with the CPU
time the server spent per request; medians and spreads of such runs, and the ratio of two
loads taken round by round, so that each ratio compares runs seconds apart; and the command
line's throughput options, which ``--smoke`` makes tiny.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, TypeVar

from benchmarks import loadgen, wrk
from benchmarks.config import LOAD_CORE
from benchmarks.servers import Server, can_pin

# The most clients a smoke run's throughput loads have, whatever --connections says.
SMOKE_CONNECTIONS: Final = 8

Key = TypeVar("Key")


@dataclass(frozen=True)
class Settings:
    """How each load runs: its clients, seconds, and whether wrk (else loadgen.py) sends it."""

    connections: int
    duration: float
    use_wrk: bool


@dataclass(frozen=True)
class Measured:
    """One load run, rounded as the results record it: requests/s, latency (ms), failed
    requests, the server's CPU microseconds per request, and the tool that sent it."""

    tool: str
    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    failures: int
    cpu_us_per_request: float | None


@dataclass(frozen=True)
class _Sent:
    """What a load tool reported: requests/s, latency (ms), failed and completed requests."""

    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    failures: int
    requests: int
    tool: str


def measure_load(
    server: Server, path: str, settings: Settings, headers: dict[str, str] | None = None
) -> Measured:
    """One load on ``path`` of ``server``, with the CPU time the server spent per request
    (its own process: what the machine's other work does not change much, unlike
    requests/s)."""
    send = _with_wrk if settings.use_wrk else _with_loadgen
    cpu = cpu_seconds(server.pid)
    sent = send(server.port, path, settings, headers)
    cpu = cpu_seconds(server.pid) - cpu
    return Measured(
        tool=sent.tool,
        requests_per_second=round(sent.requests_per_second, 1),
        p50_ms=None if sent.p50_ms is None else round(sent.p50_ms, 2),
        p99_ms=None if sent.p99_ms is None else round(sent.p99_ms, 2),
        failures=sent.failures,
        cpu_us_per_request=round(cpu / sent.requests * 1e6, 1) if sent.requests else None,
    )


def cpu_seconds(pid: int) -> float:
    """The user and system CPU seconds process ``pid`` has used so far (``/proc/pid/stat``)."""
    # After the command's name (in parentheses, which may hold spaces): utime and stime are
    # the 12th and 13th fields.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _with_wrk(port: int, path: str, settings: Settings, headers: dict[str, str] | None) -> _Sent:
    core = LOAD_CORE if can_pin() else None
    report = wrk.run(
        port,
        path,
        connections=settings.connections,
        duration=settings.duration,
        core=core,
        headers=headers,
    )
    failures = report.non_2xx + report.socket_errors
    return _Sent(
        report.requests_per_second,
        report.p50_ms,
        report.p99_ms,
        failures,
        report.requests,
        "wrk",
    )


def _with_loadgen(
    port: int, path: str, settings: Settings, headers: dict[str, str] | None
) -> _Sent:
    result = loadgen.run_async(
        loadgen.run_load(
            port,
            path,
            connections=settings.connections,
            duration=settings.duration,
            headers=headers,
        )
    )
    latencies = [r.latency * 1000 for r in result.responses if r.status == 200]
    p50 = loadgen.percentile(latencies, 0.50)
    p99 = loadgen.percentile(latencies, 0.99)
    failures = len(result.responses) - len(latencies) + result.transport_errors
    return _Sent(
        result.requests_per_second,
        p50,
        p99,
        failures,
        len(result.responses),
        "benchmarks/loadgen.py",
    )


# -- figures ---------------------------------------------------------------------------------


def round_ratios(
    values: Mapping[tuple[int, Key], float | None], top: Key, bottom: Key
) -> dict[str, float | None]:
    """``top`` over ``bottom`` in each round where both were measured (and ``bottom`` is not
    0), ``values`` keyed by round and load: their median, min and max."""
    ratios = []
    for number in sorted({number for number, _ in values}):
        high, low = values.get((number, top)), values.get((number, bottom))
        if high is not None and low:
            ratios.append(high / low)
    return spread_of(ratios)


def spread_of(values: list[float]) -> dict[str, float | None]:
    """The median, min and max of ``values`` (None each when there are none)."""
    if not values:
        return {"median": None, "min": None, "max": None}
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def median_of(values: list[float | None]) -> float | None:
    """The median of the values that are known, or None if none is."""
    known = [value for value in values if value is not None]
    return round(statistics.median(known), 2) if known else None


# -- the command line ------------------------------------------------------------------------


def add_throughput_options(parser: argparse.ArgumentParser, full: Mapping[str, float]) -> None:
    """``--rounds``, ``--duration`` (their full run's values in ``full``) and
    ``--connections``."""
    parser.add_argument("--rounds", type=int, help=f"throughput rounds ({full['rounds']:g})")
    duration = f"seconds per throughput run ({full['duration']:g})"
    parser.add_argument("--duration", type=float, help=duration)
    parser.add_argument("--connections", type=int, default=64, help="throughput clients (64)")


def parse_throughput_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    full: Mapping[str, float],
    smoke: Mapping[str, float],
    at_least_one: Sequence[str],
) -> argparse.Namespace:
    """``argv`` parsed by ``parser`` (which has ``--smoke``): an option of ``full`` left out
    takes its value there, or in ``smoke`` with ``--smoke``, which also holds
    ``--connections`` to ``SMOKE_CONNECTIONS``; the options named in ``at_least_one`` must be
    1 or more, else the parser's error."""
    args = parser.parse_args(argv)
    for name, value in (smoke if args.smoke else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.smoke:
        args.connections = min(args.connections, SMOKE_CONNECTIONS)
    for name in at_least_one:
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    return args
