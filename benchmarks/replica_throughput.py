"""Read throughput of ``/db`` on the replica against the primary-only path, and the token's cost.

Four loads on one server, in each round in a rotated order: ``/db`` through
``db.read_session`` on the Database with the replica, with no write token; the same with a
token the replica has already replayed (known from its last reading, so the check is a
comparison, not a query); ``/primary/db``, the same endpoint on a Database without replicas;
and ``/direct/db``, on a Database whose own URL is the replica's, which tells dbscope's
routing apart from the replica server's own speed. Ratios compare runs of the same round.
wrk runs the load when it is installed (the full run), else the Python load generator (the
smoke mode).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass
from typing import Any, Final

import httpx

from benchmarks import loadgen
from benchmarks.replica_pairs import TOKEN_HEADER, served, stats
from benchmarks.servers import HOST, Server
from benchmarks.throughput import Settings, measure_load, median_of, round_ratios, spread_of

# A client id no pair client uses, for the write that makes the token.
TOKEN_CLIENT: Final = 1_000_000
REPLAY_TIMEOUT: Final = 10.0
WARMUP: Final = 1.0


@dataclass(frozen=True)
class Load:
    """One path, with or without the replayed write token."""

    key: str
    label: str
    path: str
    token: bool


REPLICA: Final = Load("replica", "`/db`, Database with the replica, no token", "/db", False)
TOKEN: Final = Load("token", "`/db`, Database with the replica, replayed token", "/db", True)
PRIMARY: Final = Load("primary", "`/primary/db`, Database without replicas", "/primary/db", False)
DIRECT: Final = Load(
    "direct", "`/direct/db`, Database on the replica's URL, no replicas", "/direct/db", False
)
LOADS: Final = (REPLICA, TOKEN, PRIMARY, DIRECT)


@dataclass(frozen=True)
class Run:
    """One load run: its round, requests/s, latency (ms), failures, and where reads went."""

    round: int
    load: str
    tool: str
    requests_per_second: float
    p50_ms: float | None
    p99_ms: float | None
    failures: int
    served_by_replica: int
    fallbacks: int
    cpu_us_per_request: float | None


async def replayed_token(port: int) -> str:
    """A write token, from a write through the app, once the replica has replayed it."""
    base = f"http://{HOST}:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=REPLAY_TIMEOUT) as http:
        written = await http.post("/write", params={"client": TOKEN_CLIENT, "seq": 1})
        written.raise_for_status()
        token = written.headers[TOKEN_HEADER]
        deadline = time.monotonic() + REPLAY_TIMEOUT
        # A read with the token served by the replica: the replica has it, and says so to
        # the app, which keeps that position for the reads that follow.
        while time.monotonic() < deadline:
            read = await http.get(
                "/read", params={"client": TOKEN_CLIENT}, headers={TOKEN_HEADER: token}
            )
            if read.status_code == 200 and read.json()["replica"]:
                return token
            await asyncio.sleep(0.05)
    message = f"no read with the token {token} was served by the replica in {REPLAY_TIMEOUT} s"
    raise RuntimeError(message)


def run_load(server: Server, load: Load, token: str, settings: Settings, *, number: int) -> Run:
    """One run of ``load``, with what ``/stats`` counted meanwhile and the CPU time the server
    spent per request."""
    headers = {TOKEN_HEADER: token} if load.token else None
    before = loadgen.run_async(stats(server.port))
    measured = measure_load(server, load.path, settings, headers)
    after = loadgen.run_async(stats(server.port))
    fallbacks = sum(after["fallbacks"].values()) - sum(before["fallbacks"].values())
    return Run(
        round=number,
        load=load.key,
        tool=measured.tool,
        requests_per_second=measured.requests_per_second,
        p50_ms=measured.p50_ms,
        p99_ms=measured.p99_ms,
        failures=measured.failures,
        served_by_replica=served(after) - served(before),
        fallbacks=fallbacks,
        cpu_us_per_request=measured.cpu_us_per_request,
    )


def measure(server: Server, settings: Settings, *, rounds: int) -> list[Run]:
    """Every load once per round, in an order rotated each round, after a warm-up of each."""
    token = loadgen.run_async(replayed_token(server.port))
    warmup = Settings(settings.connections, WARMUP, settings.use_wrk)
    for load in LOADS:
        run_load(server, load, token, warmup, number=0)
    runs = []
    for number in range(1, rounds + 1):
        shift = number % len(LOADS)
        for load in LOADS[shift:] + LOADS[:shift]:
            runs.append(run_load(server, load, token, settings, number=number))
            print(f"  round {number}: {runs[-1]}", flush=True)
    return runs


def summary(runs: list[Run], settings: Settings) -> dict[str, Any]:
    """Medians and spreads per load, and the two ratios per round (median, min, max)."""
    by_load: dict[str, Any] = {}
    for load in LOADS:
        mine = [run for run in runs if run.load == load.key]
        rates = [run.requests_per_second for run in mine]
        by_load[load.key] = {
            "label": load.label,
            "requests_per_second": spread_of(rates),
            "p50_ms": median_of([run.p50_ms for run in mine]),
            "p99_ms": median_of([run.p99_ms for run in mine]),
            "cpu_us_per_request": median_of([run.cpu_us_per_request for run in mine]),
            "failures": sum(run.failures for run in mine),
            "served_by_replica": sum(run.served_by_replica for run in mine),
            "fallbacks": sum(run.fallbacks for run in mine),
        }
    return {
        "seconds": settings.duration,
        "connections": settings.connections,
        "loads": by_load,
        "replica_vs_primary": _ratios(runs, REPLICA, PRIMARY),
        "token_vs_no_token": _ratios(runs, TOKEN, REPLICA),
        "routed_vs_direct": _ratios(runs, REPLICA, DIRECT),
        "direct_vs_primary": _ratios(runs, DIRECT, PRIMARY),
        "cpu_replica_vs_primary": _ratios(runs, REPLICA, PRIMARY, cpu=True),
        "cpu_token_vs_no_token": _ratios(runs, TOKEN, REPLICA, cpu=True),
        "cpu_routed_vs_direct": _ratios(runs, REPLICA, DIRECT, cpu=True),
        "cpu_direct_vs_primary": _ratios(runs, DIRECT, PRIMARY, cpu=True),
        "runs": [asdict(run) for run in runs],
    }


def _ratios(
    runs: list[Run], top: Load, bottom: Load, *, cpu: bool = False
) -> dict[str, float | None]:
    """``top`` over ``bottom`` in each round (requests/s, or with ``cpu`` CPU per request):
    their median, min and max."""
    value = {
        (run.round, run.load): run.cpu_us_per_request if cpu else run.requests_per_second
        for run in runs
    }
    return round_ratios(value, top.key, bottom.key)
