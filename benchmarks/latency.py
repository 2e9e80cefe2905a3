"""Latency over HTTP with every client counted, the requests left unanswered included.

wrk, and so the load tables, report the latencies of the requests that finished within a
run. A server whose queue leaves some clients waiting past the run (SQLAlchemy's, under the
blog pattern) never shows them, and at 256 connections wrk counts more waiting than its
connections can hold (docs/benchmarks.md, "latency seen"). This run uses the Python client
(benchmarks/loadgen.py) instead: for each variant's server, started as the load harness
starts it (one uvicorn worker with uvloop, pinned to the server core) and warmed up, it sends
each database load for ``--duration`` seconds from the load core, and reports requests/s,
the p50 and p99 of the answered requests, how many clients had waited over a second for the
answer still due when the run ended, and the p99 and longest wait over every request, an
unanswered one counted at what it had waited by the end: a lower bound of its latency that no
queue can hide. (Every client has one request in flight at any moment, so each run ends with
one unanswered request per connection; most have just been sent.)

``benchmarks/.venv/bin/python benchmarks/latency.py`` (``BENCH_DATABASE_URL`` as for the
other benchmarks; ``--variants``, ``--duration``, ``--rounds``; results are printed and
written to ``benchmarks/results/latency.json``, ``--output`` elsewhere). The Python client
keeps up with the database loads (about 1,500 requests/s here), not with ``/nodb``'s 10,000:
that one is left out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Final

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import data, loadgen, servers
from benchmarks.catalog import BY_NAME, LOADS, Load
from benchmarks.config import LOAD_CORE, SERVER_CORE, base_env
from benchmarks.variants.common import bench_settings

VARIANTS: Final = ("blog", "dbscope_session", "with_fastapi_sqla", "with_advanced_alchemy")
DATABASE_LOADS: Final = tuple(load for load in LOADS if load.endpoint != "nodb")
RESULTS: Final = Path(__file__).resolve().parent / "results" / "latency.json"
WARM_UP_SECONDS: Final = 1.0
# A client whose request had waited this long when the run ended counts as kept waiting.
KEPT_WAITING_SECONDS: Final = 1.0


@dataclass(frozen=True)
class Waits:
    """One run of one load on one variant, in requests/s and milliseconds."""

    variant: str
    load: str
    requests_per_second: float
    answered_p50_ms: float
    answered_p99_ms: float
    kept_waiting: int
    every_p99_ms: float
    every_longest_ms: float


def waits(variant: str, load: Load, result: loadgen.LoadResult) -> Waits:
    """What ``result`` says, the unanswered requests counted at what they had waited."""
    answered = [response.latency for response in result.responses]
    every = answered + result.unanswered
    return Waits(
        variant=variant,
        load=load.key,
        requests_per_second=result.requests_per_second,
        answered_p50_ms=1000 * (loadgen.percentile(answered, 0.50) or 0.0),
        answered_p99_ms=1000 * (loadgen.percentile(answered, 0.99) or 0.0),
        kept_waiting=sum(1 for waited in result.unanswered if waited > KEPT_WAITING_SECONDS),
        every_p99_ms=1000 * (loadgen.percentile(every, 0.99) or 0.0),
        every_longest_ms=1000 * max(every, default=0.0),
    )


def measure(variant: str, duration: float, log: Path) -> list[Waits]:
    """Start ``variant``'s server, warm it up, and run every database load on it."""
    with servers.running(
        BY_NAME[variant].label, variant, env=base_env(), log=log, core=SERVER_CORE, fast=True
    ) as server:
        measured = []
        for load in DATABASE_LOADS:
            _load(server.port, load, WARM_UP_SECONDS)
            measured.append(waits(variant, load, _load(server.port, load, duration)))
            print(_line(measured[-1]), flush=True)
        return measured


def _load(port: int, load: Load, seconds: float) -> loadgen.LoadResult:
    return loadgen.run_async(
        loadgen.run_load(port, load.path, connections=load.connections, duration=seconds)
    )


def median_by_load(runs: list[Waits]) -> list[Waits]:
    """Per variant and load, the median of each figure over the rounds."""
    summed = []
    for variant in dict.fromkeys(run.variant for run in runs):
        for load in dict.fromkeys(run.load for run in runs):
            these = [run for run in runs if run.variant == variant and run.load == load]
            summed.append(
                Waits(
                    variant,
                    load,
                    statistics.median(run.requests_per_second for run in these),
                    statistics.median(run.answered_p50_ms for run in these),
                    statistics.median(run.answered_p99_ms for run in these),
                    round(statistics.median(run.kept_waiting for run in these)),
                    statistics.median(run.every_p99_ms for run in these),
                    statistics.median(run.every_longest_ms for run in these),
                )
            )
    return summed


def _line(run: Waits) -> str:
    return (
        f"  {run.variant:<22} {run.load:<11} {run.requests_per_second:>7,.0f} req/s  "
        f"answered p50 {run.answered_p50_ms:>7.1f} p99 {run.answered_p99_ms:>7.1f} ms  "
        f"kept waiting {run.kept_waiting:>3}  every p99 {run.every_p99_ms:>7.1f} "
        f"longest {run.every_longest_ms:>7.1f} ms"
    )


def main() -> int:
    """Run the rounds, print the medians and write them."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    os.sched_setaffinity(0, {LOAD_CORE})  # the client: the servers are pinned by taskset
    loadgen.run_async(data.ensure_world(bench_settings().url))  # the rows /db reads
    logs = Path(tempfile.mkdtemp(prefix="dbscope-latency-"))
    runs: list[Waits] = []
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}/{args.rounds}", flush=True)
        for variant in args.variants.split(","):
            runs += measure(variant, args.duration, logs / f"{variant}-{round_ + 1}.log")
    print("medians:")
    summed = median_by_load(runs)
    for run in summed:
        print(_line(run))
    args.output.write_text(json.dumps([asdict(run) for run in summed], indent=2) + "\n")
    print(f"written to {args.output}; server logs in {logs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
