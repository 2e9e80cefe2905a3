"""CPU per ``/db`` request with many requests sharing a few connections, without HTTP.

``python benchmarks/contention.py`` (in benchmarks/.venv; ``BENCH_DATABASE_URL`` as for the
other benchmarks) drives each variant's app in one process through ASGI from ``--workers``
tasks that share its pool (``BENCH_POOL_SIZE``, 16 by default), each sending ``GET /db``
(``--target`` another path, e.g. ``/queries?q=20``) until ``--requests`` have been sent,
and measures the CPU time the process spent per request, its requests per second and each
request's latency (p50, p99 and the longest over all rounds: the app's own, to which HTTP
adds the server's and its connections'). Each round measures every variant in turn, so that
a busy moment of the machine falls on all of them alike; CPU and rates are medians over the
rounds, after one round of warm-up. With ``--workers 1`` it is one request at a time.

This is what the HTTP load leaves out (uvicorn, the load generator and the database share
the machine's cores there) and what an instruction count distorts under contention: under
callgrind the process runs some 50 times slower while the database does not, so requests
overlap differently and the garbage collector runs far more than in a real run
(``benchmarks/instructions.py``). Results are printed and written to
``benchmarks/results/contention.json`` (``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import data
from benchmarks.profiling import Call, asgi_get
from benchmarks.variants.common import bench_settings

VARIANTS: Final = ("blog", "dbscope_session", "with_fastapi_sqla", "with_advanced_alchemy")
RESULTS: Final = Path(__file__).resolve().parent / "results" / "contention.json"


@dataclass
class Sent:
    """What sending a batch of requests spent: CPU and wall seconds, and each one's latency."""

    cpu: float
    wall: float
    latencies: list[float] = field(default_factory=list)


async def send(call: Call, requests: int, workers: int) -> Sent:
    """Send ``requests`` from ``workers`` tasks, each waiting for its answer before the next."""
    left = requests
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            started = time.perf_counter()
            status = await call()
            latencies.append(time.perf_counter() - started)
            if status != 200:
                message = f"a request answered {status}"
                raise RuntimeError(message)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    return Sent(time.process_time() - cpu, time.perf_counter() - wall, latencies)


async def measure(
    variants: list[str], workers: int, requests: int, rounds: int, target: str = "/db"
) -> dict[str, dict[str, float]]:
    """Median CPU µs per request and requests/s of each variant over ``rounds``."""
    await data.ensure_world(bench_settings().url)
    cpu: dict[str, list[float]] = {variant: [] for variant in variants}
    rates: dict[str, list[float]] = {variant: [] for variant in variants}
    latencies: dict[str, list[float]] = {variant: [] for variant in variants}
    async with contextlib.AsyncExitStack() as running:
        calls: dict[str, Call] = {}
        for variant in variants:
            app: Any = importlib.import_module(f"benchmarks.variants.{variant}").app
            await running.enter_async_context(app.router.lifespan_context(app))
            calls[variant] = asgi_get(app, target)
        for round_number in range(rounds + 1):  # the first round only warms up
            for variant in variants:
                sent = await send(calls[variant], requests, workers)
                if round_number:
                    cpu[variant].append(sent.cpu / requests * 1e6)
                    rates[variant].append(requests / sent.wall)
                    latencies[variant].extend(sent.latencies)
    return {
        variant: _figures(cpu[variant], rates[variant], latencies[variant]) for variant in variants
    }


def _figures(cpu: list[float], rates: list[float], latencies: list[float]) -> dict[str, float]:
    # Latency over all measured rounds together: the app's own, without HTTP in front of it.
    percentiles = statistics.quantiles(latencies, n=100)
    return {
        "cpu_us": round(statistics.median(cpu), 1),
        "requests_per_second": round(statistics.median(rates)),
        "p50_ms": round(percentiles[49] * 1e3, 1),
        "p99_ms": round(percentiles[98] * 1e3, 1),
        "max_ms": round(max(latencies) * 1e3, 1),
    }


def use_uvicorns_loop() -> None:
    """Run on uvloop where it is installed, as uvicorn does."""
    if importlib.util.find_spec("uvloop") is not None:
        uvloop = importlib.import_module("uvloop")
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main() -> int:
    """Measure, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workers", default="1,64", help="tasks sending at once, per measure")
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--target", default="/db", help="e.g. /queries?q=20")
    parser.add_argument("--output", type=Path, default=RESULTS)
    arguments = parser.parse_args()
    use_uvicorns_loop()
    variants = arguments.variants.split(",")
    figures: dict[str, dict[str, dict[str, float]]] = {}
    for workers in (int(count) for count in arguments.workers.split(",")):
        measured = asyncio.run(
            measure(variants, workers, arguments.requests, arguments.rounds, arguments.target)
        )
        figures[str(workers)] = measured
        for variant, found in measured.items():
            print(
                f"{variant:24} {workers:3} workers: {found['cpu_us']:7.1f} µs CPU per request, "
                f"{found['requests_per_second']:,} req/s, p50 {found['p50_ms']} ms, "
                f"p99 {found['p99_ms']} ms, max {found['max_ms']} ms"
            )
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
