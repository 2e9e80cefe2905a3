"""The overload scenario: far more clients than connections, each request holding one 50 ms.

With ``pool_size=5, max_overflow=0`` and ``GET /hold`` keeping its connection for 50 ms, the
pool can serve at most 100 requests/s (a little less, since each request also holds its
connection for the ping, BEGIN and COMMIT). The scenario first measures what the pool does
serve to ten clients (twice the pool: always one waiting, never long enough to time out),
then overloads it with 256, and counts each status, the time
to the first 503, the p99 of the successes, how quickly excess requests are shed, the
tracebacks in the server's log, and whether the service answers again within one second once
the load stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from benchmarks import loadgen, servers
from benchmarks.variants.common import HOLD_SECONDS

POOL_SIZE: Final = 5
CLIENTS: Final = 256
CAPACITY_CLIENTS: Final = 2 * POOL_SIZE
CAPACITY_SECONDS: Final = 3.0
HEALTH_WINDOW: Final = 1.0
# How long after the load the harness keeps probing, to say how late a slow recovery came.
PROBE_LIMIT: Final = 5.0
PROBE_PAUSE: Final = 0.05
TRACEBACK: Final = "Traceback (most recent call last)"


# dbscope's wait line: 10 waiters behind 5 connections held 50 ms each is a wait of ~100 ms.
MAX_WAITERS: Final = 2 * POOL_SIZE


@dataclass(frozen=True)
class Scenario:
    """One overloaded server: a variant, its pool_timeout and its wait line (None: default)."""

    variant: str
    label: str
    pool_timeout: float | None
    pool_max_waiters: int | None = None
    back_off: bool = False


SERVERS: Final = (
    Scenario("blog", "blog pattern, pool_timeout=2", 2.0),
    Scenario("dbscope_session", "dbscope, pool_timeout=2, no bound on the line", 2.0),
    Scenario("dbscope_session", f"dbscope, pool_max_waiters={MAX_WAITERS}", None, MAX_WAITERS),
)
# Clients that send again at once, and clients that wait as Retry-After asks (urllib3's
# retries do): shedding at once helps only the second kind, while the first turns every
# refusal into another request at once.
SCENARIOS: Final = (
    *SERVERS,
    *(
        dataclasses.replace(
            scenario, label=f"{scenario.label}; clients honour Retry-After", back_off=True
        )
        for scenario in SERVERS
    ),
)


@dataclass(frozen=True)
class OverloadResult:
    """What one overload scenario measured; times in seconds, latencies in milliseconds."""

    variant: str
    label: str
    pool_size: int
    pool_timeout: float | None
    pool_max_waiters: int | None
    back_off: bool
    clients: int
    duration: float
    responses: int
    statuses: dict[str, int]
    transport_errors: int
    reconnects: int
    first_503_s: float | None
    success_p50_ms: float | None
    success_p99_ms: float | None
    shed_p50_ms: float | None
    shed_p99_ms: float | None
    error_500_p50_ms: float | None
    goodput_rps: float
    nominal_capacity_rps: float
    capacity_rps: float
    goodput_ratio: float
    healthy_after_s: float | None
    healthy_within_1s: bool
    tracebacks: int
    log_lines: int

    def as_json(self) -> dict[str, Any]:
        """The result as plain JSON data."""
        return asdict(self)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 1)


async def _recovery(port: int) -> float | None:
    """Seconds from now until GET /db answers 200, or None if not within PROBE_LIMIT."""
    start = time.monotonic()
    while (elapsed := time.monotonic() - start) < PROBE_LIMIT:
        status = await loadgen.fetch_status(port, "/db", wait=PROBE_LIMIT - elapsed)
        if status == 200:
            return time.monotonic() - start
        await asyncio.sleep(PROBE_PAUSE)
    return None


async def _measure(
    port: int, duration: float, *, back_off: bool
) -> tuple[float, loadgen.LoadResult, float | None]:
    """The pool's capacity, then the overload, then the time to recover."""
    capacity = await loadgen.run_load(
        port, "/hold", connections=CAPACITY_CLIENTS, duration=CAPACITY_SECONDS
    )
    served = sum(1 for r in capacity.responses if r.status == 200) / CAPACITY_SECONDS
    result = await loadgen.run_load(
        port, "/hold", connections=CLIENTS, duration=duration, back_off=back_off
    )
    return served, result, await _recovery(port)


def run_scenario(
    scenario: Scenario, *, duration: float, log: Path, server_core: int | None, fast: bool
) -> OverloadResult:
    """Start the variant with a pool of five, overload it for ``duration`` s, and measure."""
    env = {"BENCH_POOL_SIZE": str(POOL_SIZE), "BENCH_MAX_OVERFLOW": "0"}
    env["BENCH_POOL_TIMEOUT"] = "" if scenario.pool_timeout is None else str(scenario.pool_timeout)
    waiters = scenario.pool_max_waiters
    env["BENCH_POOL_MAX_WAITERS"] = "" if waiters is None else str(waiters)
    with servers.running(
        scenario.label, scenario.variant, env=env, log=log, core=server_core, fast=fast
    ) as server:
        capacity, load, healthy_after = loadgen.run_async(
            _measure(server.port, duration, back_off=scenario.back_off)
        )
        output = server.log_text()
    responses = load.responses
    ok = [r.latency for r in responses if 200 <= r.status < 300]
    shed = [r for r in responses if r.status == 503]
    errors = [r.latency for r in responses if r.status == 500]
    goodput = len(ok) / duration
    return OverloadResult(
        variant=scenario.variant,
        label=scenario.label,
        pool_size=POOL_SIZE,
        pool_timeout=scenario.pool_timeout,
        pool_max_waiters=scenario.pool_max_waiters,
        back_off=scenario.back_off,
        clients=CLIENTS,
        duration=duration,
        responses=len(responses),
        statuses={str(code): count for code, count in sorted(load.statuses.items())},
        transport_errors=load.transport_errors,
        reconnects=load.reconnects,
        first_503_s=round(min(r.sent + r.latency for r in shed), 3) if shed else None,
        success_p50_ms=_ms(loadgen.percentile(ok, 0.50)),
        success_p99_ms=_ms(loadgen.percentile(ok, 0.99)),
        shed_p50_ms=_ms(loadgen.percentile([r.latency for r in shed], 0.50)),
        shed_p99_ms=_ms(loadgen.percentile([r.latency for r in shed], 0.99)),
        error_500_p50_ms=_ms(loadgen.percentile(errors, 0.50)),
        goodput_rps=round(goodput, 1),
        nominal_capacity_rps=POOL_SIZE / HOLD_SECONDS,
        capacity_rps=round(capacity, 1),
        goodput_ratio=round(goodput / capacity, 3) if capacity else 0.0,
        healthy_after_s=None if healthy_after is None else round(healthy_after, 3),
        healthy_within_1s=healthy_after is not None and healthy_after <= HEALTH_WINDOW,
        tracebacks=output.count(TRACEBACK),
        log_lines=sum(1 for line in output.splitlines() if not line.startswith(servers.HEADER)),
    )
