"""Failover of reads: the replica stopped for real under a steady read load, then started again.

``/db`` (``db.read_session`` on the Database with the replica) is loaded without pause. A
while in, ``tests/replicas/cluster stop-replica`` stops the replica (``pg_ctlcluster ...
stop -m fast``: its connections are cut); some seconds later ``start-replica`` starts it and
waits until it streams. Every answer is counted by status (a 500 is a bug: a read must go to
the primary, or at worst answer 503), and ``/stats`` is polled to see when the replica serves
reads again: the time from its start until its count of served reads moves.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any, Final

import httpx

from benchmarks import loadgen
from benchmarks.replica_cluster import run_script
from benchmarks.replica_pairs import served, stats

POLL: Final = 0.05
# Load goes on this long after the reads came back, to see that they stay.
AFTER: Final = 1.0


@dataclass(frozen=True)
class Plan:
    """When to stop the replica, for how long, and how long to wait for reads to return."""

    connections: int
    before: float
    down: float
    limit: float


@dataclass(frozen=True)
class FailoverResult:
    """What one failover saw; times in seconds from the replica's start (``start-replica``)."""

    connections: int
    load_seconds: float
    down_seconds: float
    responses: int
    sent_after_end: int
    statuses: dict[str, int]
    errors_500: int
    transport_errors: int
    reconnects: int
    by_window: dict[str, dict[str, int]]
    stop_took: float
    start_took: float
    reads_back_after: float | None
    served_while_down: int
    served_after_back: int
    fallbacks: dict[str, int]
    states: list[tuple[float, str]]

    def as_json(self) -> dict[str, Any]:
        """The result as plain JSON data."""
        return asdict(self)


class _Watch:
    """``/stats`` read every POLL seconds: the replica's served count and state over time.

    Each sample keeps when its request was sent and when its answer came: the count was read
    in between (a busy server answers late).
    """

    def __init__(self, port: int) -> None:
        self.port = port
        self.samples: list[tuple[float, float, int, str]] = []

    async def run(self) -> None:
        while True:
            sent = time.monotonic()
            # A reading that fails (the server too busy to answer in time) is only a gap.
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                numbers = await stats(self.port)
                state = ",".join(r["state"] for r in numbers["replicas"])
                self.samples.append((sent, time.monotonic(), served(numbers), state))
            await asyncio.sleep(POLL)

    def served_before(self, moment: float) -> int:
        """The served count last read surely before ``moment`` (answered by then)."""
        earlier = [count for _, answered, count, _ in self.samples if answered <= moment]
        return earlier[-1] if earlier else 0

    def served_after(self, moment: float) -> int | None:
        """The served count first read surely after ``moment`` (asked after it)."""
        return next((count for sent, _, count, _ in self.samples if sent >= moment), None)

    def moved_after(self, moment: float, count: int) -> float | None:
        """When an answer first showed the served count above ``count`` after ``moment``."""
        return next(
            (answered for sent, answered, c, _ in self.samples if sent >= moment and c > count),
            None,
        )


async def _until_back(watch: _Watch, since: float, count: int, limit: float) -> float | None:
    deadline = since + limit
    while time.monotonic() < deadline:
        back = watch.moved_after(since, count)
        if back is not None:
            return back
        await asyncio.sleep(POLL)
    return None


async def run(port: int, plan: Plan) -> FailoverResult:
    """Load ``/db``, stop the replica, start it again, and wait for reads to return to it."""
    before = await stats(port)
    watch = _Watch(port)
    watcher = asyncio.create_task(watch.run())
    done = asyncio.Event()
    started = time.monotonic()
    total = plan.before + plan.down + plan.limit + 4 * 60  # bounded; the script's own limits
    load = asyncio.create_task(
        loadgen.run_load(
            port, "/db", connections=plan.connections, duration=total, wait=10.0, until=done
        )
    )
    try:
        await asyncio.sleep(plan.before)
        stopping = time.monotonic()
        stop_took = await run_script("stop-replica")
        await asyncio.sleep(plan.down)
        starting = time.monotonic()
        down_count = watch.served_before(starting)
        start_took = await run_script("start-replica")
        back = await _until_back(watch, starting, down_count, plan.limit)
        await asyncio.sleep(AFTER)
    finally:
        done.set()
        result = await load
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
    after = await stats(port)
    windows = {
        "before the stop": (0.0, stopping - started),
        "replica down": (stopping - started, starting - started),
        "after its start": (starting - started, float("inf")),
    }
    fallbacks = Counter(after["fallbacks"])
    fallbacks.subtract(before["fallbacks"])
    return FailoverResult(
        connections=plan.connections,
        load_seconds=round(result.duration, 2),
        down_seconds=round(starting - stopping, 2),
        responses=len(result.responses),
        sent_after_end=result.sent_after_end,
        statuses={str(code): n for code, n in sorted(result.statuses.items())},
        errors_500=result.statuses[500],
        transport_errors=result.transport_errors,
        reconnects=result.reconnects,
        by_window={name: _statuses(result, low, high) for name, (low, high) in windows.items()},
        stop_took=round(stop_took, 2),
        start_took=round(start_took, 2),
        reads_back_after=None if back is None else round(back - starting, 2),
        served_while_down=down_count - (watch.served_after(stopping + stop_took) or down_count),
        served_after_back=served(after) - down_count,
        fallbacks={reason: n for reason, n in sorted(fallbacks.items()) if n},
        states=_transitions(watch, starting),
    )


def _statuses(result: loadgen.LoadResult, low: float, high: float) -> dict[str, int]:
    counts = Counter(r.status for r in result.responses if low <= r.sent < high)
    return {str(code): n for code, n in sorted(counts.items())}


def _transitions(watch: _Watch, starting: float) -> list[tuple[float, str]]:
    """Each change of the replica's state, in seconds from its start (negative: before)."""
    changes: list[tuple[float, str]] = []
    for _, when, _, state in watch.samples:
        if not changes or changes[-1][1] != state:
            changes.append((round(when - starting, 2), state))
    return changes
