"""How to choose ``pool_max_waiters``: the overload scenario over a range of bounds.

The scenario of benchmarks/overload.py (``pool_size=5``, ``GET /hold`` keeping its
connection 50 ms, so about 100 requests/s at most; 256 clients), run on dbscope's Session path
with each bound of ``--bounds`` and without one (``pool_timeout=2``), for clients that send
again at once and clients that wait as ``Retry-After`` asks. For each it reports the goodput
against the capacity measured just before, the p50 and p99 of the 2xx, the share of 503s and
how long the service took to answer again after the load. The wait a bound allows is about
``pool_max_waiters x service time / pool_size``; docs/configuration.md has the table.

``benchmarks/.venv/bin/python benchmarks/line_bound.py`` (``BENCH_DATABASE_URL`` as for the
other benchmarks; ``--bounds``, ``--duration``; results are printed and written to
``benchmarks/results/line-bound.json``, ``--output`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Final

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import overload
from benchmarks.config import LOAD_CORE, SERVER_CORE
from benchmarks.variants.common import HOLD_SECONDS

RESULTS: Final = Path(__file__).resolve().parent / "results" / "line-bound.json"
BOUNDS: Final = "0,5,10,20,40"


def scenarios(bounds: list[int | None]) -> list[overload.Scenario]:
    """The Session path with each bound (None: no bound, ``pool_timeout=2``), for both kinds
    of client."""
    made = []
    for back_off in (False, True):
        for bound in bounds:
            label = "no bound, pool_timeout=2" if bound is None else f"pool_max_waiters={bound}"
            timeout = 2.0 if bound is None else None
            made.append(
                overload.Scenario("dbscope_session", label, timeout, bound, back_off=back_off)
            )
    return made


def row(result: overload.OverloadResult) -> str:
    """One line of the table: bound, clients, goodput, 2xx latency, 503 share, recovery."""
    bound = result.pool_max_waiters
    allowed = "—" if bound is None else f"{bound * HOLD_SECONDS / result.pool_size * 1000:.0f}"
    refused = result.statuses.get("503", 0) / result.responses if result.responses else 0.0
    clients = "honour Retry-After" if result.back_off else "retry at once"
    healthy = "—" if result.healthy_after_s is None else f"{result.healthy_after_s:.2f}"
    return (
        f"| {bound if bound is not None else 'none'} | {allowed} | {clients} | "
        f"{result.goodput_ratio:.0%} | {result.success_p50_ms} / {result.success_p99_ms} | "
        f"{refused:.0%} | {result.statuses.get('500', 0)} | {healthy} |"
    )


def main() -> int:
    """Run every scenario, print the table and write the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--bounds", default=BOUNDS, help="comma-separated pool_max_waiters")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of overload")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})  # the clients: the server is pinned by taskset
    bounds: list[int | None] = [int(bound) for bound in args.bounds.split(",")]
    logs = Path(tempfile.mkdtemp(prefix="dbscope-line-bound-"))
    print(
        "| pool_max_waiters | wait it allows, ms | clients | goodput | 2xx p50 / p99 ms "
        "| 503s | 500s | healthy after, s |\n|---:|---:|---|---:|---:|---:|---:|---:|",
        flush=True,
    )
    results = []
    for number, scenario in enumerate(scenarios([*bounds, None])):
        result = overload.run_scenario(
            scenario,
            duration=args.duration,
            log=logs / f"{number}.log",
            server_core=SERVER_CORE,
            fast=True,
        )
        results.append(result.as_json())
        print(row(result), flush=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.output}; server logs in {logs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
