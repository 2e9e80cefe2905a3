"""What a refused request costs the server, against a served one.

``python benchmarks/refusal_cost.py`` (in benchmarks/.venv; ``BENCH_DATABASE_URL`` as for the
other benchmarks) drives dbscope's Session app in this process through ASGI, without HTTP,
on a pool of one connection with no wait line (``pool_max_waiters=0``), and measures the CPU
microseconds per request of:

- a **served** ``GET /db`` (the connection free);
- a **refused** one: the connection held by another unit, so the line is full and the request
  is answered 503 at once (each from a client of its own, so none is held);
- a **held early retry**: a client refused a moment ago asks again at once; its request sleeps
  until its ``Retry-After`` has passed and is answered 503 without asking the pool. Measured
  over a batch of such requests at once, since each one sleeps a second or two.

Each repeat measures the three in turn; the figures are medians. The results are printed and
written to ``benchmarks/results/refusal-cost.json`` (``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import text

from benchmarks.profiling import asgi_get
from benchmarks.variants.common import bench_settings
from benchmarks.variants.dbscope_session import session_app
from dbscope import Database

REQUESTS: Final = 1000
HELD: Final = 200
REPEATS: Final = 5
RESULTS: Final = Path(__file__).parent / "results" / "refusal-cost.json"


async def _cpu_per_call(calls: list[Callable[[], Awaitable[int]]], status: int) -> float:
    """CPU microseconds per call, the calls made one after another."""
    started = time.process_time()
    for call in calls:
        answered = await call()
        if answered != status:
            raise RuntimeError(f"expected {status}, got {answered}")
    return (time.process_time() - started) / len(calls) * 1e6


async def _cpu_per_held_call(calls: list[Callable[[], Awaitable[int]]]) -> float:
    """CPU microseconds per call, the calls made at once (each one sleeps meanwhile)."""
    started = time.process_time()
    answers = await asyncio.gather(*(call() for call in calls))
    if set(answers) != {503}:
        raise RuntimeError(f"expected only 503s, got {sorted(set(answers))}")
    return (time.process_time() - started) / len(calls) * 1e6


async def measure(url: str) -> dict[str, Any]:
    """The three costs on ``url``; see the module's docstring."""
    db = Database(url, pool_size=1, max_overflow=0, pool_max_waiters=0, pool_timeout=30)
    app = session_app(db)
    served: list[float] = []
    refused: list[float] = []
    held: list[float] = []
    async with db:
        served_call = asgi_get(app, "/db")
        await _cpu_per_call([served_call] * 100, 200)  # warm-up
        port = 1
        for _ in range(REPEATS):
            served.append(await _cpu_per_call([served_call] * REQUESTS, 200))
            release = asyncio.Event()
            holding = asyncio.Event()
            holder = asyncio.create_task(_hold(db, holding, release))
            await holding.wait()
            clients = [asgi_get(app, "/db", ("127.0.0.2", port + n)) for n in range(REQUESTS)]
            port += REQUESTS
            refused.append(await _cpu_per_call(clients, 503))
            # The first HELD of those clients come back at once: held, then answered 503.
            held.append(await _cpu_per_held_call(clients[:HELD]))
            release.set()
            await holder
    return {
        "url_driver": db.url.get_driver_name(),
        "requests": REQUESTS,
        "held_requests": HELD,
        "repeats": REPEATS,
        "served_cpu_us": round(statistics.median(served), 1),
        "refused_cpu_us": round(statistics.median(refused), 1),
        "held_early_retry_cpu_us": round(statistics.median(held), 1),
    }


async def _hold(db: Database, holding: asyncio.Event, release: asyncio.Event) -> None:
    async with db.transaction() as session:
        await session.execute(text("SELECT 1"))
        holding.set()
        await release.wait()


def main() -> int:
    """Measure, print, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    results = asyncio.run(measure(bench_settings().sqlalchemy_url))
    print(json.dumps(results, indent=2))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
