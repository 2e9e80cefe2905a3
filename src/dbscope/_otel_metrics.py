"""The instruments behind ``dbscope.otel``: one set per MeterProvider, fed by every pool.

OpenTelemetry keeps one instrument per name and meter: asking again for an observable
instrument of the same name gives back the first one and drops the new callbacks. So each
MeterProvider gets one :class:`Instruments`, whose callbacks ask each instrumented pool in
turn; a pool's :class:`PoolReporter` answers under its own ``db.client.connection.pool.name``.

A reporter follows its Database's engines (it is the lifecycle's ``EngineObserver``) and is
the observer of each engine's pool (a ``PoolObserver``): what the pool already counts is read
when the SDK collects, and only the three durations are recorded per event (unless left
out). Counts carry over from one engine to the next, so a counter never goes back after
``dispose()`` and ``connect()``.

This module imports OpenTelemetry; ``dbscope.otel`` imports it only when called.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, NamedTuple

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    Observation,
    get_meter_provider,
)
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool

from dbscope._exceptions import ConfigurationError
from dbscope._lifecycle import Lifecycle
from dbscope._pool import PoolCounters, PoolStats, QueuedPool

SEMCONV_VERSION: Final = "1.44.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
POOL_NAME: Final = "db.client.connection.pool.name"
STATE: Final = "db.client.connection.state"
# Seconds. A free connection is handed over in tens of microseconds, a new one opens in
# milliseconds, a wait ends at pool_timeout (5 s by default), a unit holds its connection
# for milliseconds to seconds.
BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

Callback = Callable[[CallbackOptions], Iterable[Observation]]


@dataclass(frozen=True)
class Counts:
    """What a pool has counted since it was instrumented, over all its engines."""

    timeouts: int = 0
    refused: int = 0
    invalidated: int = 0
    pinged: int = 0

    def plus(self, stats: PoolStats) -> Counts:
        """These counts with one engine's added."""
        return Counts(
            timeouts=self.timeouts + stats.timeouts,
            refused=self.refused + stats.refused,
            invalidated=self.invalidated + stats.invalidated,
            pinged=self.pinged + stats.pinged,
        )


class Instruments:
    """dbscope's instruments on one MeterProvider, and the pools they report."""

    def __init__(self, meter: Meter) -> None:
        self.reporters: list[PoolReporter] = []
        self.wait_time = meter.create_histogram(
            "db.client.connection.wait_time",
            unit="s",
            description="Time a checkout waited for an open connection from the pool.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self.use_time = meter.create_histogram(
            "db.client.connection.use_time",
            unit="s",
            description="Time between a connection's checkout and its return to the pool.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        self.create_time = meter.create_histogram(
            "db.client.connection.create_time",
            unit="s",
            description="Time a new connection took to open.",
            explicit_bucket_boundaries_advisory=BUCKETS,
        )
        for observed in OBSERVED:
            create = (
                meter.create_observable_counter
                if observed.counter
                else meter.create_observable_up_down_counter
            )
            create(
                observed.name,
                [self._each(observed.observe)],
                unit=observed.unit,
                description=observed.description,
            )

    def _each(self, observe: Callable[[PoolReporter], list[Observation]]) -> Callback:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            # A copy: the SDK may collect in its own thread while the app adds a pool.
            return [found for reporter in tuple(self.reporters) for found in observe(reporter)]

        return callback

    def add(self, reporter: PoolReporter) -> None:
        """Report ``reporter``'s pool too; its name must be new to this MeterProvider."""
        if any(other.name == reporter.name for other in self.reporters):
            message = (
                f"Two Databases report their pool as {reporter.name!r} to this MeterProvider, "
                "which would mix their figures: give each a name of its own with the "
                "pool_name setting (Database(..., pool_name='reports'), or POOL_NAME)."
            )
            raise ConfigurationError(message)
        self.reporters.append(reporter)

    def remove(self, reporter: PoolReporter) -> None:
        """Stop reporting ``reporter``'s pool."""
        if reporter in self.reporters:
            self.reporters.remove(reporter)


class PoolReporter:
    """One Database's pool as the instruments see it, across its engines.

    Args:
        lifecycle: the Database's lifecycle, which announces its engines.
        name: the pool's name (``Database.name``).
        instruments: the instruments of the MeterProvider it reports to.
        durations: measure each checkout's wait and use, and each connection's opening.
    """

    def __init__(
        self, lifecycle: Lifecycle, name: str, instruments: Instruments, *, durations: bool
    ) -> None:
        self.name = name
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

    def start(self) -> None:
        """Report the pool from now on, its running engine included."""
        self.instruments.add(self)
        self._lifecycle.observe(self)

    def stop(self) -> None:
        """Report it no more, and stop measuring its checkouts."""
        self._lifecycle.unobserve(self)
        self.instruments.remove(self)

    # -- following the engines (EngineObserver) ----------------------------------------------

    def engine_started(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """Observe ``engine``'s pool."""
        pool = engine.pool
        if isinstance(pool, QueuedPool):
            if self.durations:
                pool.observer = self
            self._limits = pool.limits()
        with self._lock:
            self._running = (engine, counters)

    def engine_stopped(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """Keep ``engine``'s counts, and observe its pool no more."""
        pool = engine.pool
        if isinstance(pool, QueuedPool) and pool.observer is self:
            pool.observer = None
        with self._lock:
            if isinstance(pool, QueuePool):
                self._carried = self._carried.plus(counters.stats())
            self._running = None

    # -- the durations, one recording per event (PoolObserver) -------------------------------

    def waited(self, seconds: float) -> None:
        """Record one checkout's wait."""
        self.instruments.wait_time.record(seconds, self._attributes)

    def used(self, seconds: float) -> None:
        """Record how long one connection was used."""
        self.instruments.use_time.record(seconds, self._attributes)

    def created(self, seconds: float) -> None:
        """Record how long one new connection took to open."""
        self.instruments.create_time.record(seconds, self._attributes)

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
        stats, _, _ = self._figures()
        return [Observation(0 if stats is None else stats.waiting, self._attributes)]

    def _count(self, value: int) -> list[Observation]:
        return [Observation(value, self._attributes)]

    def timeouts(self) -> list[Observation]:
        """Checkouts that gave up after pool_timeout."""
        return self._count(self._figures()[1].timeouts)

    def refusals(self) -> list[Observation]:
        """Checkouts refused by a full line."""
        return self._count(self._figures()[1].refused)

    def invalidations(self) -> list[Observation]:
        """Connections thrown away."""
        return self._count(self._figures()[1].invalidated)

    def pings(self) -> list[Observation]:
        """Liveness pings."""
        return self._count(self._figures()[1].pinged)

    def retries(self) -> list[Observation]:
        """Units of work re-run after a conflict."""
        return self._count(self._lifecycle.retries)


class Observed(NamedTuple):
    """An instrument whose value is read at collection."""

    name: str
    counter: bool  # a Counter (only goes up), else an UpDownCounter
    observe: Callable[[PoolReporter], list[Observation]]
    unit: str
    description: str


OBSERVED: Final = (
    Observed(
        "db.client.connection.count",
        False,
        PoolReporter.connection_counts,
        "{connection}",
        "Connections open, by state: idle in the pool, or used.",
    ),
    Observed(
        "db.client.connection.max",
        False,
        PoolReporter.max_connections,
        "{connection}",
        "The most connections the pool may open at once (pool_size + max_overflow).",
    ),
    Observed(
        "db.client.connection.idle.max",
        False,
        PoolReporter.max_idle,
        "{connection}",
        "The most idle connections the pool keeps (pool_size).",
    ),
    Observed(
        "db.client.connection.pending_requests",
        False,
        PoolReporter.pending_requests,
        "{request}",
        "Checkouts waiting in line for a connection.",
    ),
    Observed(
        "db.client.connection.timeouts",
        True,
        PoolReporter.timeouts,
        "{timeout}",
        "Checkouts that waited pool_timeout for a connection and gave up.",
    ),
    Observed(
        "dbscope.pool.refusals",
        True,
        PoolReporter.refusals,
        "{request}",
        "Checkouts refused at once: pool_max_waiters were already waiting.",
    ),
    Observed(
        "dbscope.pool.invalidations",
        True,
        PoolReporter.invalidations,
        "{connection}",
        "Connections thrown away: dead, failed a check, or cut off mid-query.",
    ),
    Observed(
        "dbscope.pool.pings",
        True,
        PoolReporter.pings,
        "{ping}",
        "Connections pinged before use: idle long enough, or seen hung up.",
    ),
    Observed(
        "dbscope.unit.retries",
        True,
        PoolReporter.retries,
        "{retry}",
        "Units of work run again after a serialization failure or deadlock.",
    ),
)


def instruments_for(meter_provider: MeterProvider | None, version: str) -> Instruments:
    """The instruments of ``meter_provider`` (None: the global one), made at its first use."""
    # The global provider is one key whether named or not, and before the SDK is set up
    # (the API's proxy) as after: its meter is one meter, whose instruments must be made once.
    key: object = meter_provider
    if meter_provider is None or meter_provider is get_meter_provider():
        key = GLOBAL
    found = _instruments.get(key)
    if found is None:
        provider = get_meter_provider() if meter_provider is None else meter_provider
        meter = provider.get_meter("dbscope", version, schema_url=SCHEMA_URL)
        found = _instruments[key] = Instruments(meter)
    return found


class _Global:
    """The key of the global MeterProvider's instruments."""


GLOBAL: Final = _Global()
# By MeterProvider, compared by identity; weakly, so that a provider dropped (in tests) goes.
_instruments: weakref.WeakKeyDictionary[object, Instruments] = weakref.WeakKeyDictionary()
