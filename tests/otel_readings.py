"""What the tests of dbscope.otel share: the real SDK read in memory, and a held pool.

:func:`metered` gives an OpenTelemetry SDK MeterProvider whose InMemoryMetricReader the
test reads through :class:`Readings`; :class:`Holders` keeps connections checked out while
other units queue behind them, and :func:`turned_away` runs a unit that cannot get one.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    NumberDataPoint,
)
from sqlalchemy import text

from dbscope import Database, DatabaseUnavailableError

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"


class Readings:
    """One collection of the SDK: every metric it gave, by name."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        data = reader.get_metrics_data()  # None when nothing at all was reported
        resources = [] if data is None else data.resource_metrics
        self.metrics: dict[str, Metric] = {
            metric.name: metric
            for resource in resources
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def points(self, name: str) -> list[NumberDataPoint | HistogramDataPoint]:
        """The data points of metric ``name`` (none if it was not reported)."""
        metric = self.metrics.get(name)
        return [] if metric is None else list(metric.data.data_points)  # type: ignore[arg-type]

    def _point(self, name: str, pool: str, attributes: Mapping[str, str]) -> Any:
        wanted = {POOL_NAME: pool, **attributes}
        found = [point for point in self.points(name) if dict(point.attributes or {}) == wanted]
        assert len(found) == 1, f"{name} {wanted}: {self.points(name)}"
        return found[0]

    def value(self, name: str, pool: str, **attributes: str) -> int | float:
        """The value of counter or gauge ``name`` for ``pool`` (and ``attributes``)."""
        point = self._point(name, pool, attributes)
        assert isinstance(point, NumberDataPoint)
        return point.value

    def histogram(self, name: str, pool: str) -> HistogramDataPoint:
        """The data point of histogram ``name`` for ``pool``."""
        point = self._point(name, pool, {})
        assert isinstance(point, HistogramDataPoint)
        return point

    def connections(self, pool: str) -> tuple[int | float, int | float]:
        """``db.client.connection.count`` of ``pool``: (idle, used)."""
        name = "db.client.connection.count"
        return (
            self.value(name, pool, **{STATE: "idle"}),
            self.value(name, pool, **{STATE: "used"}),
        )


@dataclass
class Metered:
    """A real SDK MeterProvider and the reader the test collects with."""

    provider: MeterProvider
    reader: InMemoryMetricReader

    def read(self) -> Readings:
        """Collect now."""
        return Readings(self.reader)


@contextlib.contextmanager
def metered() -> Iterator[Metered]:
    """A MeterProvider reading into memory, shut down at the end."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        yield Metered(provider, reader)
    finally:
        provider.shutdown()


class Holders:
    """Units of work that keep their connections until released, and units that queue."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.release = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._holding = 0

    async def hold(self, count: int) -> None:
        """Check ``count`` connections out, each in a unit of its own, and keep them."""
        for _ in range(count):
            held = asyncio.Event()
            self._tasks.append(asyncio.ensure_future(self._hold(held)))
            with anyio.fail_after(10):
                await held.wait()

    async def _hold(self, held: asyncio.Event) -> None:
        # Read-only: on SQLite a unit that may write holds the file's one write lock too.
        async with self.db.transaction(read_only=True) as session:
            await session.execute(text("SELECT 1"))
            held.set()
            await self.release.wait()

    async def queue(self, count: int) -> None:
        """Start ``count`` units that wait in line; return once they all wait."""
        already = self.db.stats().waiting
        for _ in range(count):
            self._tasks.append(asyncio.ensure_future(self._query()))
        with anyio.fail_after(10):
            while True:  # the line has no event to wait for: its length is polled
                if self.db.stats().waiting == already + count:
                    return
                await asyncio.sleep(0.005)

    async def _query(self) -> None:
        async with self.db.transaction() as session:
            await session.execute(text("SELECT 1"))

    async def finish(self) -> None:
        """Release every connection and wait until every unit has ended."""
        self.release.set()
        with anyio.fail_after(10):
            await asyncio.gather(*self._tasks)


async def turned_away(db: Database) -> DatabaseUnavailableError:
    """Hold the connection of a one-connection pool and run a unit that needs one: the error
    it fails with (after pool_timeout, or at once when the line is full)."""
    holders = Holders(db)
    await holders.hold(1)
    try:
        async with db.transaction() as session:
            await session.execute(text("SELECT 1"))
    except DatabaseUnavailableError as error:
        return error
    finally:
        await holders.finish()
    raise AssertionError("the unit got a connection")
