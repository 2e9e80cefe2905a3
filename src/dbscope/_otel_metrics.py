"""The instruments behind ``dbscope.otel``: one set per MeterProvider, fed by every pool.

OpenTelemetry keeps one instrument per name and meter: asking again for an observable
instrument of the same name gives back the first one and drops the new callbacks. So each
MeterProvider gets one :class:`Instruments`, whose callbacks ask each instrumented pool in
turn; a pool's ``PoolReporter`` (``_otel_reporter.py``) answers under its own
``db.client.connection.pool.name``.

This module imports OpenTelemetry; ``dbscope.otel`` imports it only when called.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from operator import attrgetter
from typing import Final, NamedTuple

from opentelemetry.metrics import (
    CallbackOptions,
    Meter,
    MeterProvider,
    Observation,
    get_meter_provider,
)

from dbscope._exceptions import ConfigurationError
from dbscope._otel_reporter import PoolReporter

SEMCONV_VERSION: Final = "1.44.0"
SCHEMA_URL: Final = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
# Seconds. A free connection is handed over in tens of microseconds, a new one opens in
# milliseconds, a wait ends at pool_timeout (5 s by default), a unit holds its connection
# for milliseconds to seconds.
BUCKETS: Final = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

Callback = Callable[[CallbackOptions], Iterable[Observation]]


class Instruments:
    """dbscope's instruments on one MeterProvider, and the pools they report."""

    def __init__(self, meter: Meter) -> None:
        self.reporters: list[PoolReporter] = []
        self.wait_time, self.use_time, self.create_time = (
            meter.create_histogram(
                f"db.client.connection.{name}",
                unit="s",
                description=description,
                explicit_bucket_boundaries_advisory=BUCKETS,
            )
            for name, description in (
                ("wait_time", "Time a checkout waited for an open connection from the pool."),
                ("use_time", "Time between a connection's checkout and its return to the pool."),
                ("create_time", "Time a new connection took to open."),
            )
        )
        for number, observed in enumerate(OBSERVED):
            create = (
                meter.create_observable_counter
                if observed.counter
                else meter.create_observable_up_down_counter
            )
            callbacks = [self._each(observed.observe)]
            if number == 0:  # once per collection, before the SDK reads the histograms
                callbacks.insert(0, self._record_pending)
            create(observed.name, callbacks, unit=observed.unit, description=observed.description)

    def _record_pending(self, options: CallbackOptions) -> Iterable[Observation]:
        for reporter in tuple(self.reporters):
            reporter.record_pending()
        return []

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
        lambda reporter: reporter.pool_count(attrgetter("timeouts")),
        "{timeout}",
        "Checkouts that waited pool_timeout for a connection and gave up.",
    ),
    Observed(
        "dbscope.pool.refusals",
        True,
        lambda reporter: reporter.pool_count(attrgetter("refused")),
        "{request}",
        "Checkouts refused at once: pool_max_waiters were already waiting.",
    ),
    Observed(
        "dbscope.pool.abandoned",
        True,
        lambda reporter: reporter.pool_count(attrgetter("abandoned")),
        "{request}",
        "Checkouts not served when their turn came: their client had hung up while waiting.",
    ),
    Observed(
        "dbscope.pool.held_early_retries",
        True,
        PoolReporter.holds,
        "{request}",
        "Requests held until Retry-After had passed: their client asked again before it.",
    ),
    Observed(
        "dbscope.pool.invalidations",
        True,
        lambda reporter: reporter.pool_count(attrgetter("invalidated")),
        "{connection}",
        "Connections thrown away: dead, failed a check, cut off mid-query, or older than one dead.",
    ),
    Observed(
        "dbscope.pool.pings",
        True,
        lambda reporter: reporter.pool_count(attrgetter("pinged")),
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
    Observed(
        "dbscope.unit.rereads",
        True,
        PoolReporter.rereads,
        "{unit}",
        "Read-only units whose first statement ran again after its connection was lost.",
    ),
    Observed(
        "dbscope.replica.fallbacks",
        True,
        PoolReporter.fallbacks,
        "{unit}",
        "Read-only units run on the primary instead of a replica, by reason.",
    ),
)


def instruments_for(meter_provider: MeterProvider | None, version: str) -> Instruments:
    """The instruments of ``meter_provider`` (None: the global one), made at its first use."""
    # The global provider is one key whether named or not, and before the SDK is set up
    # (the API's proxy) as after: its meter is one meter, whose instruments must be made once.
    current = get_meter_provider()
    provider = current if meter_provider is None else meter_provider
    key: object = GLOBAL if provider is current else provider
    found = _instruments.get(key)
    if found is None and key is GLOBAL:
        # Named before it was made the global one: its instruments are made already.
        found = _instruments.get(current)
    if found is None:
        meter = provider.get_meter("dbscope", version, schema_url=SCHEMA_URL)
        found = Instruments(meter)
    _instruments[key] = found
    return found


class _Global:
    """The key of the global MeterProvider's instruments."""


GLOBAL: Final = _Global()
# By MeterProvider, compared by identity; weakly, so that a provider dropped (in tests) goes.
_instruments: weakref.WeakKeyDictionary[object, Instruments] = weakref.WeakKeyDictionary()
