"""Health: is this Database ready to serve, answered without ever waiting in the pool's line.

The pool's numbers (``stats()``: connections in use against the most it may open, checkouts
waiting in line) cost nothing and are read at every call. The server is asked on a connection
of the probe's own, opened outside the app's pool and closed at once, so a saturated pool never
delays the answer; the probe is bounded by ``timeout``. One reading of the server is shared by
every caller for ``max_age`` seconds, and callers arriving during a probe wait for that one:
however many load balancers and kubelets ask, the server sees one short connection per
``max_age``.

The verdict, in draft-inadarei-api-health-check's ``application/health+json``: ``fail`` (503)
for a Database not connected, a server unreachable, refusing or silent, or migrations not at
head (when asked); ``warn`` (200) for a saturated pool, since pulling every saturated instance
out of the load balancer moves their load onto the others, which saturate in turn; else
``pass``. The body names no host, port, user, database or server version.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import Pool, QueuePool

from dbscope._dialects import backend
from dbscope._errors import connection_gone, translate
from dbscope._exceptions import ConfigurationError, DatabaseUnavailableError
from dbscope._health_report import Health, HealthCheck, Status
from dbscope._lifecycle import Lifecycle
from dbscope._pool import QueuedPool
from dbscope._pool_stats import PoolStats, ReplicaStats
from dbscope._unavailable import Limits
from dbscope._urls import describe_location

logger = logging.getLogger("dbscope")

# A Kubernetes probe's default timeoutSeconds is 1: the probe gives up well before it.
DEFAULT_TIMEOUT: Final = 0.5
DEFAULT_MAX_AGE: Final = 1.0


@dataclass(frozen=True)
class ProbeOptions:
    """How a readiness probe asks: checked when made, so that a bad value fails at start-up.

    Attributes:
        timeout: seconds after which an unanswered probe of the server counts as ``fail``.
        max_age: seconds for which one reading of the server answers every probe.
        migrations: the ``alembic.ini`` whose head revisions the database must be at; None:
            not checked.
    """

    timeout: float = DEFAULT_TIMEOUT
    max_age: float = DEFAULT_MAX_AGE
    migrations: str | Path | None = None

    def __post_init__(self) -> None:
        timeout, max_age, migrations = self.timeout, self.max_age, self.migrations
        if not (_is_number(timeout) and 0 < timeout < math.inf):
            message = (
                f"timeout={timeout!r} must be a positive number of seconds, below the probe's "
                f"own timeout (Kubernetes' timeoutSeconds, 1 by default); e.g. {DEFAULT_TIMEOUT}."
            )
            raise ConfigurationError(message)
        if not (_is_number(max_age) and 0 <= max_age < math.inf):
            message = (
                f"max_age={max_age!r} must be a number of seconds, 0 or more, for which one "
                f"server reading answers every probe; e.g. {DEFAULT_MAX_AGE}."
            )
            raise ConfigurationError(message)
        if migrations is not None and not (
            isinstance(migrations, str | Path) and Path(migrations).is_file()
        ):
            message = (
                f"migrations={str(migrations)!r} names no file; give the path of the app's "
                "alembic.ini (relative paths start from the working directory)."
            )
            raise ConfigurationError(message)

    @property
    def config(self) -> Path | None:
        """The ``alembic.ini``'s absolute path, if migrations are checked."""
        return None if self.migrations is None else Path(self.migrations).absolute()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# One probe's checks of the server, and when it ended (time.monotonic()).
_Reading = tuple[tuple[HealthCheck, ...], float]


class HealthProbe:
    """The health of one Database: its probe engine, its last reading, its probe in flight."""

    def __init__(
        self,
        lifecycle: Lifecycle,
        replicas: Callable[[], tuple[ReplicaStats, ...]] | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._replicas = replicas
        # Keyed by the app's engine: a new one (after dispose and connect) gets a new probe.
        self._engines: dict[tuple[AsyncEngine, float], AsyncEngine] = {}
        self._reading: tuple[object, _Reading] | None = None  # keyed as the in-flight probe
        self._in_flight: tuple[object, asyncio.Task[_Reading]] | None = None
        self._heads: dict[Path, tuple[str, ...]] = {}
        self._failing = False

    async def health(self, options: ProbeOptions) -> Health:
        """The Database's health now (the server's reading at most ``max_age`` old)."""
        now = datetime.now(UTC)
        state = self._lifecycle.state
        if state in ("new", "disposed"):
            reason = "was disposed" if state == "disposed" else "is not connected yet"
            output = f"the Database {reason}: it serves no unit of work"
            return Health.of((_server_check("fail", now, output=output),))
        engine = self._lifecycle.engine
        # While bound (tests), every unit shares the test's connection: no pool to wait for;
        # a pool that keeps no queue (NullPool) has no bound to reach.
        pool: tuple[HealthCheck, ...] = ()
        if state == "connected" and isinstance(engine.pool, QueuePool):
            pool = pool_checks(engine.pool, self._lifecycle.stats(), now)
        if state == "connected" and self._replicas is not None:
            pool += tuple(replica_check(replica, now) for replica in self._replicas())
        server = await self._server(engine, options)
        return Health.of(server + pool)

    async def close(self) -> None:
        """Let a probe in flight end (within its timeout) and drop the probe engines."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is not None and in_flight[1].get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(in_flight[1])
        engines, self._engines, self._reading = self._engines, {}, None
        for probe_engine in engines.values():
            await probe_engine.dispose()

    async def _server(self, engine: AsyncEngine, options: ProbeOptions) -> tuple[HealthCheck, ...]:
        config = options.config
        key = (engine, config)
        reading = self._reading
        if reading is not None and reading[0] == key:
            checks, at = reading[1]
            if time.monotonic() - at <= options.max_age:
                return checks
        url = backend(engine.url.get_backend_name()).probe_url(engine.url)
        if url is None:  # a memory database: nothing outside the pool reaches it
            return ()
        try:
            heads = None if config is None else await self._heads_of(config)
        except ConfigurationError as error:  # a broken alembic.ini: failing, as is the app
            if not self._failing:
                self._failing = True
                logger.warning("Not ready: %s", error)
            output = "the migrations' configuration could not be read (the log says why)"
            return (_server_check("fail", datetime.now(UTC), output=output),)
        loop = asyncio.get_running_loop()
        in_flight = self._in_flight
        if in_flight is None or in_flight[0] != key or _over(in_flight[1], loop):
            task = loop.create_task(self._probe(engine, url, options.timeout, heads))
            task.add_done_callback(lambda done: self._keep(key, url, done))
            in_flight = self._in_flight = (key, task)
        task = in_flight[1]
        try:
            # Shielded: a caller giving up leaves the probe to end, and answer the next ones.
            # Not wait_for: on Python 3.11 it swallows a cancel that comes as the probe ends.
            async with asyncio.timeout(options.timeout):
                fresh = await asyncio.shield(task)
        except TimeoutError:
            return (self._unanswered(options.timeout),)
        return fresh[0]

    def _unanswered(self, timeout: float) -> HealthCheck:
        """The server's reading when the probe had no answer within ``timeout``."""
        if self._lifecycle.settings.pgbouncer is not None and self._lifecycle.stats().checked_out:
            # Behind PgBouncer the probe waits in its line for a server connection, which this
            # app's own transactions hold: busy, not down (a fail would pull every instance
            # behind a busy bouncer out at once).
            output = f"{_no_answer(timeout)}: PgBouncer's line, the app's transactions ahead"
            return _server_check("warn", datetime.now(UTC), output=output)
        return _server_check("fail", datetime.now(UTC), output=_no_answer(timeout))

    def _keep(self, key: object, url: URL, task: asyncio.Task[_Reading]) -> None:
        if task.cancelled():
            return
        reading = task.result()
        self._reading = (key, reading)
        failing = any(check.status == "fail" for check in reading[0])
        if failing != self._failing:  # logged once per change, not once per probe
            self._failing = failing
            if failing:
                outputs = "; ".join(check.output for check in reading[0] if check.output)
                logger.warning("Not ready: %s (%s)", outputs, describe_location(url))
            else:
                logger.info("Ready again: %s answers", describe_location(url))

    async def _heads_of(self, config: Path) -> tuple[str, ...]:
        # The scripts do not change under a running app: read once, off the event loop, and
        # outside the probe's timeout (the first read imports Alembic and parses every script).
        heads = self._heads.get(config)
        if heads is None:
            from dbscope._migrations import head_revisions, load_config

            heads = await asyncio.to_thread(lambda: head_revisions(load_config(config)))
            self._heads[config] = heads
        return heads

    async def _probe(
        self,
        engine: AsyncEngine,
        url: URL,
        timeout: float,  # noqa: ASYNC109 - not a cancellation: running out is a "fail" reading
        heads: tuple[str, ...] | None,
    ) -> _Reading:
        key = (engine, timeout)
        probe_engine = self._engines.get(key)
        if probe_engine is None:
            self._engines = {key: (probe_engine := self._lifecycle.own_engine(url, timeout))}
        checks: tuple[HealthCheck, ...]
        try:
            async with asyncio.timeout(timeout), probe_engine.connect() as connection:
                started = time.perf_counter()
                await connection.run_sync(_ping)
                elapsed = time.perf_counter() - started
                checks = (_server_check("pass", datetime.now(UTC), elapsed=elapsed),)
                if heads is not None:
                    schema = self._lifecycle.settings.postgres_schema
                    checks += (await _migrations_check(connection, heads, schema),)
        except TimeoutError:
            checks = (self._unanswered(timeout),)
        except Exception as error:  # every failure is a verdict on the server, not a crash
            checks = (_failed(error, url, engine.pool),)
        return checks, time.monotonic()


def _failed(error: Exception, url: URL, pool: Pool) -> HealthCheck:
    """The server's reading when the probe's connection failed with ``error``."""
    orig = error.orig if isinstance(error, DBAPIError) else error
    if not backend(url.get_backend_name()).at_connection_limit(orig):
        return _server_check("fail", datetime.now(UTC), output=_failure(error, url))
    held = pool.checkedout() + pool.open_idle() if isinstance(pool, QueuedPool) else 0
    if held:
        # The app serves with the connections its pool holds, which may be those that
        # reach the limit: busy, not down (a fail would pull out every instance that shares
        # the limit at once, and for good while their pools keep them).
        output = f"{AT_LIMIT}: the probe's connection was refused; the app's pool holds {held}"
        return _server_check("warn", datetime.now(UTC), output=output)
    output = f"{AT_LIMIT}, and the app's pool holds no connection"
    return _server_check("fail", datetime.now(UTC), output=output)


def _over(task: asyncio.Task[_Reading], loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``task`` can answer no more callers here: it ended, or runs in another loop."""
    return task.done() or task.get_loop() is not loop


def _ping(connection: Connection) -> None:
    """The dialect's own liveness round trip (as SQLAlchemy's pre-ping sends).

    The ping reaches the driver past SQLAlchemy's handling of errors, so a connection the
    server ended (asyncpg's InternalClientError after the FATAL, its "connection is closed",
    psycopg's AdminShutdown) is judged here, while the driver can still say so: dropped,
    which spares it the pool's reset (psycopg's fails, logged with a traceback), and raised
    as SQLAlchemy raises a statement's error on one, invalidated.
    """
    pooled = connection.connection
    dbapi_connection = pooled.dbapi_connection
    assert dbapi_connection is not None  # a connection just opened
    try:
        connection.dialect.do_ping(dbapi_connection)
    except Exception as error:
        if not connection_gone(error, connection.engine.url, pooled.driver_connection):
            raise
        connection.invalidate(error)
        raise DBAPIError.instance(
            None, None, error, Exception, connection_invalidated=True
        ) from error


async def _migrations_check(
    connection: AsyncConnection, heads: tuple[str, ...], schema: str | None
) -> HealthCheck:
    from dbscope._migrations import MigrationStatus, current_revisions

    current = await connection.run_sync(current_revisions, schema=schema)
    status = MigrationStatus(current=current, heads=heads)
    output = None
    if not status.at_head:
        output = (
            f"the database is at {list(current) or 'no revision'}, the migrations' head is "
            f"{list(heads)}: run the migrations"
        )
    verdict: Status = "pass" if status.at_head else "fail"
    return _check(
        "database", "migrations", verdict, datetime.now(UTC), current, "revisions", output
    )


def pool_checks(pool: QueuePool, stats: PoolStats, now: datetime) -> tuple[HealthCheck, ...]:
    """The pool's readings: how full it is, and how many checkouts wait in line."""
    # SQLAlchemy keeps the overflow bound only in this attribute; -1 (or a pool_size of 0)
    # means no bound.
    overflow = pool._max_overflow
    checks: tuple[HealthCheck, ...] = ()
    if overflow >= 0 and pool.size() > 0:
        capacity = pool.size() + overflow
        full = stats.checked_out >= capacity
        output = f"all {capacity} connections are in use" if full else None
        checks += (_pool_check("utilization", now, 100 * stats.checked_out // capacity, output),)
    waiting = stats.waiting
    output = f"{waiting} requests wait for a connection" if waiting else None
    return (*checks, _pool_check("waiting", now, waiting, output))


def replica_check(replica: ReplicaStats, now: datetime) -> HealthCheck:
    """A replica's reading: ``warn`` when it serves no reads (they go to the primary, so the
    instance still serves), with its lag in bytes; never its name, which names its host."""
    output = None if replica.state == "ready" else f"a replica is {replica.state}"
    return _check("replica", "lag", "warn" if output else "pass", now, replica.lag, "bytes", output)


def _pool_check(measurement: str, now: datetime, value: int, output: str | None) -> HealthCheck:
    unit = "percent" if measurement == "utilization" else "requests"
    return _check(
        "pool", measurement, "pass" if output is None else "warn", now, value, unit, output
    )


def _server_check(
    status: Status, now: datetime, *, elapsed: float | None = None, output: str | None = None
) -> HealthCheck:
    if elapsed is None:
        return _check("database", "responseTime", status, now, output=output)
    return _check("database", "responseTime", status, now, round(elapsed * 1000, 3), "ms", output)


def _check(
    component: str,
    measurement: str,
    status: Status,
    now: datetime,
    value: float | tuple[str, ...] | None = None,
    unit: str | None = None,
    output: str | None = None,
) -> HealthCheck:
    # The pool is a component of the app; the server and the replicas are datastores.
    kind = "component" if component == "pool" else "datastore"
    return HealthCheck(
        component=component,
        measurement=measurement,
        component_type=kind,
        status=status,
        time=now,
        observed_value=value,
        observed_unit=unit,
        output=output,
    )


# The server refused a new connection for a connection limit (the server's, a user's or a
# database's): it answered, and takes one again once others close.
AT_LIMIT: Final = "the database's connection limit is reached"


def _no_answer(timeout: float) -> str:
    return f"the database did not answer within {timeout:g} s"


def _failure(error: Exception, url: URL) -> str:
    # Phrases of our own: the driver's message names the host, and the body must not.
    translated = translate(error, Limits(url))
    if isinstance(translated, DatabaseUnavailableError) and translated.cause == "connection_lost":
        return "the connection to the database was lost"
    if isinstance(translated, DatabaseUnavailableError):
        return "the database could not be reached"
    if isinstance(translated, ConfigurationError):
        return "the database refused the probe's connection (user, password, database or rights)"
    return f"the probe failed ({type(error).__name__})"
