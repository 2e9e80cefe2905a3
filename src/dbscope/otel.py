"""The connection pool's metrics on OpenTelemetry: ``dbscope.otel.instrument(db)``.

dbscope emits OpenTelemetry's semantic conventions for database client connection pools,
**pinned to semantic conventions 1.44.0**, where they are at "development" stability: a
later version may rename them, and dbscope changes the pinned version only in a release that
says so. Every measurement carries ``db.client.connection.pool.name`` (``Database.name``):

- ``db.client.connection.count`` by ``db.client.connection.state`` (``idle``, ``used``),
  ``db.client.connection.max``, ``db.client.connection.idle.max`` and
  ``db.client.connection.pending_requests`` (the wait line): UpDownCounters;
- ``db.client.connection.timeouts``: a Counter;
- ``db.client.connection.wait_time``, ``use_time`` and ``create_time``: Histograms, in
  seconds;
- dbscope's own, Counters: ``dbscope.pool.refusals`` (refused by a full wait line),
  ``dbscope.pool.abandoned`` (not served when their turn came: the client had hung up),
  ``dbscope.pool.held_early_retries`` (requests of clients that came back before the
  ``Retry-After`` of such a refusal, held until it passed and answered 503 unrun),
  ``dbscope.pool.invalidations``, ``dbscope.pool.pings`` (liveness pings) and
  ``dbscope.unit.retries`` (units of work run again after a conflict).

Counts and limits are observed (callbacks read what the pool counts anyway, when the SDK
collects); a request pays only for the durations it records (none with
``durations=False``), and nothing at all before ``instrument()``. Only ``opentelemetry-api``
is needed (``pip install 'dbscope[otel]'``): the application chooses the SDK, the reader
and the exporter. ``import dbscope`` never imports OpenTelemetry, nor does importing this
module; ``instrument()`` does.

Engines are built through ``sqlalchemy.ext.asyncio.create_async_engine`` looked up at each
``connect()``, so OpenTelemetry's own SQLAlchemy instrumentation, once it has run, traces
every statement as well (see docs/metrics.md).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Final

from dbscope import __version__
from dbscope._database import Database
from dbscope._exceptions import ConfigurationError
from dbscope._setting_checks import a_kind

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from dbscope._otel_metrics import Instruments
    from dbscope._otel_reporter import PoolReporter

__all__ = ["SEMCONV_VERSION", "PoolMetrics", "instrument"]

SEMCONV_VERSION: Final = "1.44.0"
"""The version of OpenTelemetry's semantic conventions the metric names follow."""
INSTALL: Final = "pip install 'dbscope[otel]'"


class PoolMetrics:
    """One Database's pool metrics, reported to one MeterProvider; ``instrument()`` makes it.

    They follow the Database across ``connect()`` and ``dispose()``: counters keep counting
    from one engine to the next, and while disposed the pool reports no connections. Each
    read replica's pool is reported as a pool of its own, named as the replica.
    """

    def __init__(
        self, name: str, reporter: PoolReporter, replicas: tuple[PoolReporter, ...] = ()
    ) -> None:
        self._name = name
        self._reporter = reporter
        self._replicas = replicas
        self._closed = False

    @property
    def name(self) -> str:
        """The pool's name in every measurement (``db.client.connection.pool.name``)."""
        return self._name

    @property
    def closed(self) -> bool:
        """Whether close() was called."""
        return self._closed

    def close(self) -> None:
        """Stop reporting and measuring this pool; calling it again does nothing.

        OpenTelemetry cannot take an instrument back: the pool's series end, and a later
        ``instrument()`` of the Database starts its counters again from what its pool counts.
        """
        if not self._closed:
            self._closed = True
            for reporter in (self._reporter, *self._replicas):
                reporter.stop()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"PoolMetrics(name={self._name!r}, {state})"


def instrument(
    db: Database, *, meter_provider: MeterProvider | None = None, durations: bool = True
) -> PoolMetrics:
    """Report ``db``'s connection pool to OpenTelemetry, from now until ``close()``.

    Call it once per Database, before or after ``connect()``. Calling it again with the same
    arguments gives the same PoolMetrics; with others, it is refused (close the first). Two
    Databases on one MeterProvider need two names (the ``pool_name`` setting).

    Args:
        db: the Database whose pool to report.
        meter_provider: where to report; default: OpenTelemetry's global MeterProvider, even
            one set up after this call.
        durations: record the three histograms (``wait_time``, ``use_time``,
            ``create_time``): two recordings per checkout. False reports only what the pool
            counts, which costs a request nothing.

    Returns:
        The handle whose ``close()`` stops the reporting.

    Raises:
        ModuleNotFoundError: the OpenTelemetry API is not installed.
        ConfigurationError: ``db`` is no Database or ``meter_provider`` no MeterProvider;
            ``db`` is reported to another MeterProvider already, or another Database reports
            a pool of the same name to this one.
    """
    _check_arguments(db, meter_provider, durations)
    try:
        from dbscope._otel_metrics import instruments_for
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("opentelemetry"):
            raise
        message = (
            f"dbscope.otel needs the OpenTelemetry API, which is not installed ({error.name!r} "
            f"is missing): {INSTALL}, then set up an SDK and exporter in the application."
        )
        raise ModuleNotFoundError(message, name=error.name) from None
    instruments = instruments_for(meter_provider, __version__)
    existing = _instrumented.get(db)
    if existing is not None and not existing.closed:
        reporting = existing._reporter
        if reporting.instruments is instruments and reporting.durations == durations:
            return existing
        message = (
            f"{db!r} already reports its pool metrics, to another MeterProvider or with "
            f"durations={reporting.durations}; call close() on the PoolMetrics the first "
            "instrument() returned before instrumenting it again."
        )
        raise ConfigurationError(message)
    metrics = _instrumented[db] = _started(db, instruments, durations)
    return metrics


def _started(db: Database, instruments: Instruments, durations: bool) -> PoolMetrics:
    """``db``'s pool reported to ``instruments`` from now on, and each replica's as a pool of
    its own, named as the replica."""
    from dbscope._otel_reporter import PoolReporter  # imported already, by _otel_metrics

    # The Database's lifecycle announces each engine it builds and disposes.
    router = db._replicas
    fallbacks = None if router is None else (lambda: dict(router.fallbacks))
    reporter = PoolReporter(
        db._lifecycle, db.name, instruments, durations=durations, fallbacks=fallbacks
    )
    replicas = tuple(
        PoolReporter(replica.lifecycle, replica.name, instruments, durations=durations)
        for replica in ([] if router is None else router.replicas)
    )
    for started in (reporter, *replicas):
        started.start()
    return PoolMetrics(db.name, reporter, replicas)


def _check_arguments(db: object, meter_provider: object, durations: object) -> None:
    # Named by their type only: a URL passed for the Database may hold a password.
    if not isinstance(db, Database):
        message = (
            f"instrument() takes the dbscope.Database to report, got {a_kind(db)}: "
            "pass the Database itself, e.g. dbscope.otel.instrument(db)."
        )
        raise ConfigurationError(message)
    if meter_provider is not None and not callable(getattr(meter_provider, "get_meter", None)):
        message = (
            f"meter_provider must be an OpenTelemetry MeterProvider, got "
            f"{a_kind(meter_provider)}: pass the SDK's MeterProvider(...), or leave it "
            "out for the global one."
        )
        raise ConfigurationError(message)
    if not isinstance(durations, bool):
        message = f"durations={durations!r} is no bool: True records the histograms, False not"
        raise ConfigurationError(message)


# The PoolMetrics of each Database, weakly: they keep no Database alive.
_instrumented: weakref.WeakKeyDictionary[Database, PoolMetrics] = weakref.WeakKeyDictionary()
