"""One pool as dbscope.otel's instruments see it: :class:`PoolReporter`, across its engines.

A reporter follows its Database's engines (it is the lifecycle's ``EngineObserver``) and is
the observer of each engine's pool (a ``PoolObserver``): what the pool already counts is read
when the SDK collects, and only the durations are taken per event (unless left out). Counts
carry over from one engine to the next, so a counter never goes back after ``dispose()`` and
``connect()``.

A checkout's wait and use are put aside, and recorded into their histograms in bulk when the
SDK collects (the observable instruments' callbacks run before it reads the histograms); past
``PENDING_MAX``, each checkout records the oldest few (``RECORD_BATCH``), on the event loop:
the backlog stops growing, and no one checkout records all 40,000 (880 ms of the loop's time,
measured on 2 busy cores). Measured on a one-row PostgreSQL unit of work (about 400 µs of
CPU): the two ``Histogram.record()`` calls in its path cost 8-9% of it, against about 3% for
the same calls made in a row at collection (the SDK's code and data stay in the CPU's
caches), and the request's latency none. The measurements lose only the span context that
exemplars would take from the request.

This module imports OpenTelemetry; ``dbscope.otel`` imports it only when called.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Final

from opentelemetry.metrics import Observation
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from dbscope._lifecycle import Lifecycle
from dbscope._pool import PoolCounters, QueuedPool
from dbscope._pool_stats import PoolStats

if TYPE_CHECKING:
    from dbscope._otel_metrics import Instruments

POOL_NAME: Final = "db.client.connection.pool.name"
STATE: Final = "db.client.connection.state"
# Why a read-only unit ran on the primary instead of a replica (dbscope.replica.fallbacks).
REASON: Final = "dbscope.fallback.reason"
# Durations put aside beyond which a checkout records them itself: memory stays bounded
# (about 1 MB per pool) when nothing collects, or collects seldom.
PENDING_MAX: Final = 20_000
# Of each kind, recorded per checkout past PENDING_MAX: more than the one it adds, so that the
# backlog drains, and few enough that the checkout's own cost barely changes.
RECORD_BATCH: Final = 2


@dataclass(frozen=True)
class Counts:
    """What a pool has counted since it was instrumented, over all its engines."""

    timeouts: int = 0
    refused: int = 0
    abandoned: int = 0
    invalidated: int = 0
    pinged: int = 0

    def plus(self, stats: PoolStats) -> Counts:
        """These counts with one engine's added."""
        return Counts(*(getattr(self, f.name) + getattr(stats, f.name) for f in fields(self)))


class PoolReporter:
    """One Database's pool as the instruments see it, across its engines.

    Args:
        lifecycle: the Database's lifecycle, which announces its engines.
        name: the pool's name (``Database.name``).
        instruments: the instruments of the MeterProvider it reports to.
        durations: measure each checkout's wait and use, and each connection's opening.
        fallbacks: the Database's reads sent to the primary instead of a replica, by why.
    """

    def __init__(
        self,
        lifecycle: Lifecycle,
        name: str,
        instruments: Instruments,
        *,
        durations: bool,
        fallbacks: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        self.name = name
        self._fallbacks = fallbacks
        self.instruments = instruments
        self.durations = durations
        self._lifecycle = lifecycle
        self._attributes = {POOL_NAME: name}
        self._idle = {POOL_NAME: name, STATE: "idle"}
        self._used = {POOL_NAME: name, STATE: "used"}
        # The SDK collects in a thread of its own: engines come and go under this lock, so
        # that a collection never counts an engine both as running and as carried over.
        self._lock = threading.Lock()
        self._running: tuple[AsyncEngine, PoolCounters] | None = None
        self._carried = Counts()
        self._limits: tuple[int, float] | None = None
        self._waits: deque[float] = deque()
        self._uses: deque[float] = deque()

    def start(self) -> None:
        """Report the pool from now on, its running engine included."""
        self.instruments.add(self)
        self._lifecycle.observe(self)

    def stop(self) -> None:
        """Report it no more, and stop measuring its checkouts."""
        self._lifecycle.unobserve(self)
        self.instruments.remove(self)
        self.record_pending()

    # -- following the engines (EngineObserver) ----------------------------------------------

    def engine_started(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """Observe ``engine``'s pool."""
        pool = engine.pool
        if isinstance(pool, QueuedPool):
            if self.durations:
                counters.observe(self)
            self._limits = pool.limits()
        with self._lock:
            self._running = (engine, counters)

    def engine_stopped(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """Keep ``engine``'s counts, and observe its pool no more."""
        pool = engine.pool
        if isinstance(pool, QueuedPool) and pool.observer is self:
            counters.observe(None)
        with self._lock:
            if isinstance(pool, QueuePool):
                self._carried = self._carried.plus(counters.stats())
            self._running = None

    # -- the durations (PoolObserver) ---------------------------------------------------------

    def waited(self, seconds: float) -> None:
        """Put one checkout's wait aside, to be recorded at the next collection."""
        self._waits.append(seconds)
        if len(self._waits) > PENDING_MAX:
            self.record_pending(RECORD_BATCH)

    def used(self, seconds: float) -> None:
        """Put aside how long one connection was used."""
        self._uses.append(seconds)

    def created(self, seconds: float) -> None:
        """Record how long one new connection took to open (seldom: at once)."""
        self.instruments.create_time.record(seconds, self._attributes)

    def record_pending(self, most: int | None = None) -> None:
        """Record the durations put aside into their histograms: all, or the oldest ``most``
        of each kind."""
        # popleft() and append() are atomic: a checkout may add while a collection takes, and
        # two readers may collect at once, each taking what the other has not.
        for pending, histogram in (
            (self._waits, self.instruments.wait_time),
            (self._uses, self.instruments.use_time),
        ):
            left = -1 if most is None else most
            while left != 0:
                try:
                    seconds = pending.popleft()
                except IndexError:
                    break
                histogram.record(seconds, self._attributes)
                left -= 1

    # -- what the pool knows, read at collection ---------------------------------------------

    def _figures(self) -> tuple[PoolStats | None, Counts, bool]:
        """The pool's stats now (None unless a queue pool runs), its counts, and whether an
        engine runs at all."""
        with self._lock:
            running, carried = self._running, self._carried
            if running is None or not isinstance(running[0].pool, QueuePool):
                return None, carried, running is not None
            stats = running[1].stats()
        return stats, carried.plus(stats), True

    def connection_counts(self) -> list[Observation]:
        """Idle and used connections (none while disposed)."""
        stats, _, running = self._figures()
        if stats is None and running:
            return []  # a pool of the user's own that keeps no queue (NullPool): no counts
        idle, used = (0, 0) if stats is None else (stats.checked_in, stats.checked_out)
        return [Observation(idle, self._idle), Observation(used, self._used)]

    def max_connections(self) -> list[Observation]:
        """pool_size + max_overflow, when bounded."""
        if self._limits is None or self._limits[1] == float("inf"):
            return []
        return [Observation(int(self._limits[1]), self._attributes)]

    def max_idle(self) -> list[Observation]:
        """pool_size."""
        return [] if self._limits is None else [Observation(self._limits[0], self._attributes)]

    def pending_requests(self) -> list[Observation]:
        """Checkouts waiting in line now."""
        stats, _, running = self._figures()
        if stats is None and running:
            return []  # NullPool: no line to wait in
        return [Observation(0 if stats is None else stats.waiting, self._attributes)]

    def _count(self, value: int) -> list[Observation]:
        return [Observation(value, self._attributes)]

    def pool_count(self, count: Callable[[Counts], int]) -> list[Observation]:
        """A count of the pool's, carried over its engines; none while a NullPool runs,
        which keeps no line, no check and no count."""
        stats, counts, running = self._figures()
        return [] if stats is None and running else self._count(count(counts))

    def fallbacks(self) -> list[Observation]:
        """Read-only units run on the primary instead of a replica, by why."""
        counts = {} if self._fallbacks is None else self._fallbacks()
        return [
            Observation(count, {POOL_NAME: self.name, REASON: reason})
            for reason, count in counts.items()
        ]

    def retries(self) -> list[Observation]:
        """Units of work re-run after a conflict."""
        return self._count(self._lifecycle.retries)

    def rereads(self) -> list[Observation]:
        """Read-only units whose first statement ran again after a lost connection."""
        return self._count(self._lifecycle.rereads)

    def holds(self) -> list[Observation]:
        """Requests held until their client's Retry-After had passed (after a full line)."""
        return self.pool_count(lambda _: self._lifecycle.held)
