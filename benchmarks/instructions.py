"""Instructions per ``/db`` request, counted by callgrind: what each variant's code costs.

``python benchmarks/instructions.py`` (in benchmarks/.venv, with valgrind installed;
``BENCH_DATABASE_URL`` as for the other benchmarks) drives each variant's app in one process
through ASGI, without HTTP, from ``--workers`` tasks that share its pool (``BENCH_POOL_SIZE``,
16 by default), and counts the instructions the process executes. Each count is taken twice
under ``valgrind --tool=callgrind``, once with ``--requests`` more requests than the other; the
difference over those requests is the figure, so start-up, imports and the warm-up cancel out.
``--target`` counts another path (``/queries?q=20``: give it fewer ``--requests`` and a
shorter ``--warm-up``, each request being twenty).

Unlike a timing, the count does not move with the machine's load, so it compares what one
request's code costs across variants to within a percent or two. It leaves out what a
count cannot see: the time a request waits for the database, and what the event loop
spends between requests, which is where a round trip more or less shows (the blog pattern's
ping, say). With ``--workers`` above the pool size, requests wait for connections, so the
count includes what each variant's pool pays for its waiters.

Under callgrind the process runs some 50 times slower while the database does not, so a
connection's idle time stretches too: dbscope's ping after ``pool_pre_ping_after`` seconds
idle is put off for the count (``--ping-after``, 1,000 s by default), as a busy pool would
never idle that long, and every pool waits up to an hour for a connection (the blog pattern's
pool leaves some waiters waiting while newer requests are served, and under callgrind they
would time out). Results are printed and written to
``benchmarks/results/instructions.json`` (``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import data
from benchmarks.contention import send, use_uvicorns_loop
from benchmarks.profiling import asgi_get
from benchmarks.variants.common import bench_settings

VARIANTS: Final = ("blog", "dbscope_session", "with_fastapi_sqla", "with_advanced_alchemy")
COLLECTED: Final = re.compile(r"Collected : (\d+)")
RESULTS: Final = Path(__file__).resolve().parent / "results" / "instructions.json"


@dataclass(frozen=True)
class Count:
    """What one count sends: ``target``, first ``warm_up`` times, from ``workers`` tasks."""

    target: str
    warm_up: int
    workers: int
    ping_after: float


async def serve(variant: str, count: Count, requests: int) -> None:
    """Warm ``variant`` up, then send it ``requests`` ``GET target`` from the count's tasks."""
    module = importlib.import_module(f"benchmarks.variants.{variant}")
    call = asgi_get(module.app, count.target)
    async with module.app.router.lifespan_context(module.app):
        await send(call, count.warm_up, count.workers)
        await send(call, requests, count.workers)


def counted(variant: str, count: Count, requests: int) -> int:
    """The instructions a run of :func:`serve` takes, all told, under callgrind."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={scratch}/callgrind.out",
            sys.executable,
            __file__,
            "--serve",
            variant,
            count.target,
            str(count.warm_up),
            str(count.workers),
            str(requests),
        ]
        environment = {
            **os.environ,
            "BENCH_POOL_PRE_PING_AFTER": str(count.ping_after),
            # The blog pattern's pool leaves some waiters waiting while others are served
            # again and again: under callgrind's slowness they would time out.
            "BENCH_POOL_TIMEOUT": "3600",
        }
        done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    found = COLLECTED.search(done.stderr)
    if done.returncode != 0 or found is None:
        message = f"callgrind on {variant} failed (exit {done.returncode}):\n{done.stderr[-2000:]}"
        raise RuntimeError(message)
    return int(found.group(1))


def per_request(variant: str, count: Count, requests: int) -> int:
    """Instructions per request: the difference of two counts over the requests between."""
    base = count.warm_up * 2 // 5
    small = counted(variant, count, base)
    large = counted(variant, count, base + requests)
    return round((large - small) / requests)


def main() -> int:
    """Count each variant at each number of workers; print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--workers", default="1,64", help="tasks sending at once, per count")
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--warm-up", type=int, default=500, help="requests before the count")
    parser.add_argument("--target", default="/db", help="what each request gets")
    parser.add_argument("--ping-after", type=float, default=1000.0)
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--serve", nargs=5, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.serve:  # the process callgrind counts, on uvicorn's loop where it has one
        variant, target, warm_up, workers, requests = arguments.serve
        use_uvicorns_loop()
        count = Count(target, int(warm_up), int(workers), arguments.ping_after)
        asyncio.run(serve(variant, count, int(requests)))
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is missing: apt-get install valgrind", file=sys.stderr)
        return 2
    asyncio.run(data.ensure_world(bench_settings().url))
    figures: dict[str, dict[str, int]] = {}
    for workers in (int(count) for count in arguments.workers.split(",")):
        for variant in arguments.variants.split(","):
            count = Count(arguments.target, arguments.warm_up, workers, arguments.ping_after)
            instructions = per_request(variant, count, arguments.requests)
            figures.setdefault(variant, {})[str(workers)] = instructions
            print(f"{variant:24} {workers:3} workers: {instructions:>10,} instructions per request")
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
