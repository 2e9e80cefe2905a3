"""dbscope's pool: a fair wait line in front of it, and its counters.

The wait line. SQLAlchemy's asyncio pool waits on an ``asyncio.Queue``: a request that
arrives just as a connection comes back takes it ahead of the waiter that was woken for it,
so under load some requests wait the whole ``pool_timeout`` while newcomers are served at
once; and every excess request waits. :class:`QueuedPool` puts a line in front of the
checkout: a connection handed back goes to the longest waiter, never to a newcomer, and with
``max_waiters`` set, a request arriving when the line is full fails at once (503 in FastAPI)
instead of waiting its turn to time out. The line is anyio's ``CapacityLimiter``, one token
per connection the pool may open. A request whose client hung up while it waited in line is
not served when its turn comes (:data:`waiting_client`): under overload, clients and proxies
give up, and a fair line would otherwise spend the connections on answers nobody reads,
ahead of the clients still waiting.

The checkout check, :class:`~dbscope._liveness.LivenessCheck`, is in ``_liveness.py``.

Observing. The pool counts its timeouts and refusals always (on the failure path, where an
addition costs nothing); how long each checkout waited, each connection was used and each
new connection took to open is measured only while a :class:`PoolObserver` is attached
(``dbscope.otel``): otherwise a checkout pays one attribute check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from contextvars import ContextVar
from typing import Any, Protocol, cast

import anyio
from sqlalchemy import event
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.util import await_only
from sqlalchemy.util.queue import Empty

from dbscope._exceptions import ClientDisconnectedError
from dbscope._liveness import LivenessCheck
from dbscope._pool_limit import LimitedPool
from dbscope._pool_stats import PoolStats
from dbscope._unavailable import LineFullError


class Client(Protocol):
    """The HTTP connection a request came on, as the server shows it (uvicorn's request cycle).

    Attributes:
        disconnected: the client hung up before it had its whole response.
    """

    disconnected: bool


# The task serving an HTTP request, and its client, set by the web layer for the request's own
# unit of work: a checkout made by that task that had to wait in line is not served if the
# client left meanwhile. Other tasks (one the request started, say) are always served.
waiting_client: ContextVar[tuple[asyncio.Task[Any] | None, Client] | None] = ContextVar(
    "dbscope_waiting_client", default=None
)


class PoolObserver(Protocol):
    """Told the durations of a pool's events, in seconds; attached as ``QueuedPool.observer``.

    Its methods run in the middle of a checkout or checkin: they must be quick, and not raise.
    """

    def waited(self, seconds: float) -> None:
        """A checkout got its connection after ``seconds``: in line, opening it if new, and
        pinging and replacing it if found dead."""

    def used(self, seconds: float) -> None:
        """A connection came back ``seconds`` after its checkout."""

    def created(self, seconds: float) -> None:
        """A new connection took ``seconds`` to open."""


class _CancelledResets(logging.Filter):
    """SQLAlchemy logs a checkin's reset that a cancel cut short as an ERROR with a traceback
    (asyncmy's ROLLBACK, aiosqlite's thread: one in ten cancels of a unit, measured), then
    drops the connection as it should. A cancel is no error: it is logged at DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, asyncio.CancelledError):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


class QueuedPool(LimitedPool):
    """``AsyncAdaptedQueuePool`` behind a fair wait line of at most ``max_waiters``, that
    waits out the server's connection limit (``_pool_limit.py``).

    Args:
        creator: as for every SQLAlchemy pool.
        max_waiters: how many checkouts may wait for a connection at once; None for no bound.
        **options: ``AsyncAdaptedQueuePool``'s own (``pool_size``, ``max_overflow``,
            ``timeout``...).

    Attributes:
        timeouts: checkouts that waited ``pool_timeout`` in line and gave up.
        refused: checkouts refused at once because ``max_waiters`` already waited.
        abandoned: checkouts not served when their turn came: their request's client had hung
            up while they waited.
        replaced: connections thrown away at their checkout because they were opened before
            one found lost (below).
        observer: told how long checkouts wait, connections are used and take to open;
            None (the default) measures nothing.
    """

    def __init__(self, creator: Any, max_waiters: int | None = None, **options: Any) -> None:
        super().__init__(creator, **options)
        # The pool's logger (SQLAlchemy's, by its class's name), or its echo's wrapper of it.
        logger = cast(logging.Logger, getattr(self.logger, "logger", self.logger))
        if not any(isinstance(given, _CancelledResets) for given in logger.filters):
            logger.addFilter(_CancelledResets())
        self.max_waiters = max_waiters
        self.timeouts = 0
        self.refused = 0
        self.abandoned = 0
        self.replaced = 0
        self.observer: PoolObserver | None = None
        # Created in the event loop, at the first checkout: anyio's limiter belongs to one.
        self._line: anyio.CapacityLimiter | None = None
        self._tickets: dict[ConnectionPoolEntry, object] = {}
        # The HTTP clients of the requests waiting in line (by ticket), those the web layer named.
        self._waiting_clients: dict[object, Client] = {}
        # While observed (time.perf_counter()): when each checkout under way began, and when
        # each connection in use was checked out.
        self._checkout_began: dict[ConnectionPoolEntry, float] = {}
        self._checked_out_at: dict[ConnectionPoolEntry, float] = {}
        # SQLAlchemy opens every connection, new or replacing a dead one, through this.
        self._open = self._invoke_creator
        self._invoke_creator = self._open_observed

    def recreate(self) -> QueuedPool:
        """A fresh pool with the same settings (SQLAlchemy's dispose() replaces the pool).

        Its counts and observer carry over: they belong to the engine, not to one pool.
        """
        pool = super().recreate()
        for name in ("max_waiters", "timeouts", "refused", "abandoned", "replaced", "observer"):
            setattr(pool, name, getattr(self, name))
        return cast(QueuedPool, pool)

    def take_idle(self) -> list[Any]:
        """Take the idle connections out of the pool, without I/O: the driver connections,
        for their owner to close (those of an event loop that has closed, ``_lifecycle``)."""
        taken = []
        with contextlib.suppress(Empty):
            while True:
                record = self._pool.get(False)
                if record.dbapi_connection is not None:
                    taken.append(record.dbapi_connection.driver_connection)
        return taken

    def limits(self) -> tuple[int, float]:
        """The most connections kept idle (``pool_size``) and open at once (inf: no bound)."""
        unbounded = self._max_overflow < 0  # SQLAlchemy's -1: no limit
        return self.size(), math.inf if unbounded else self.size() + self._max_overflow

    def waiting(self) -> int:
        """How many checkouts wait in line now."""
        return 0 if self._line is None else self._line.statistics().tasks_waiting

    def serves_at_once(self) -> bool:
        """Whether a checkout now would get a connection without waiting in line."""
        return self._line is None or self._line.available_tokens >= 1

    def _do_get(self) -> ConnectionPoolEntry:
        observer = self.observer
        started = 0.0 if observer is None else time.perf_counter()
        arrived = time.monotonic()
        ticket = object()
        self._enter_line(ticket)
        try:
            record = self._take_or_open(arrived)
        except BaseException:
            self._leave_line(ticket)
            raise
        self._tickets[record] = ticket
        if self._invalidate_time and self._opened_before_a_lost_one(record):
            self.replaced += 1
        if observer is not None:
            # The wait ends at checked_out(): a dead connection is replaced after this.
            self._checkout_began[record] = started
        return record

    def _opened_before_a_lost_one(self, record: ConnectionPoolEntry) -> bool:
        """Whether SQLAlchemy closes ``record``'s connection and opens another at this checkout,
        unannounced: once a connection was found lost (a disconnect error), it takes every
        one opened before it for stale. One already None was counted when invalidated."""
        opened: float = getattr(record, "starttime", math.inf)  # _ConnectionRecord's
        return record.dbapi_connection is not None and self._invalidate_time > opened

    def checked_out(self, record: ConnectionPoolEntry) -> None:
        """The checkout of ``record`` passed its checks (``PoolCounters.observe`` calls this
        after the liveness check): its wait ends, its use begins."""
        began = self._checkout_began.pop(record, None)
        observer = self.observer
        if began is not None and observer is not None:
            self._checked_out_at[record] = now = time.perf_counter()
            observer.waited(now - began)

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        ticket = self._tickets.pop(record, None)
        if self._checkout_began:  # a checkout that failed its checks: no wait, no use
            self._checkout_began.pop(record, None)
        if self._checked_out_at:  # observed (now, or when this connection was checked out)
            checked_out_at = self._checked_out_at.pop(record, None)
            observer = self.observer
            if checked_out_at is not None and observer is not None:
                observer.used(time.perf_counter() - checked_out_at)
        try:
            super()._do_return_conn(record)
        finally:
            if ticket is not None:
                self._leave_line(ticket)

    def _open_observed(self, rec: ConnectionPoolEntry) -> DBAPIConnection:
        # `rec`: the parameter's name in SQLAlchemy's type of the creator it stands in for.
        observer = self.observer
        if observer is None:
            return self._open(rec)
        started = time.perf_counter()
        connection = self._open(rec)
        observer.created(time.perf_counter() - started)
        return connection

    def _enter_line(self, ticket: object) -> None:
        line = self._line
        if line is None:
            line = self._line = anyio.CapacityLimiter(self.limits()[1])
        try:
            line.acquire_on_behalf_of_nowait(ticket)  # no await when a connection is free
            return
        except anyio.WouldBlock:
            pass
        if self.max_waiters is not None and self._waiting_for_someone() >= self.max_waiters:
            self.refused += 1
            message = (
                f"The connection pool is exhausted and {self.max_waiters} requests already "
                f"wait for a connection (pool_max_waiters={self.max_waiters}); "
                "answered at once instead of queueing."
            )
            raise LineFullError(message, code="3o7r")
        await_only(self._wait_in_line(line, ticket))

    def _waiting_for_someone(self) -> int:
        """The checkouts in line but those of requests whose client hung up: those are not
        served when their turn comes, and must not keep a live client out of the line."""
        gone = sum(client.disconnected for client in self._waiting_clients.values())
        return self.waiting() - gone

    async def _wait_in_line(self, line: anyio.CapacityLimiter, ticket: object) -> None:
        client = _request_client()
        if client is not None:
            self._waiting_clients[ticket] = client
        try:
            # asyncio's own timeout: SQLAlchemy's asyncio pool runs on asyncio only, and it
            # costs a fraction of an anyio cancel scope on this path, which every waiter takes.
            async with asyncio.timeout(self._timeout):
                await line.acquire_on_behalf_of(ticket)
        except TimeoutError:
            self.timeouts += 1
            message = (
                f"QueuePool limit of size {self.size()} overflow {self._max_overflow} reached, "
                f"connection timed out, timeout {self._timeout:.2f}"
            )
            raise PoolTimeoutError(message, code="3o7r") from None
        finally:
            self._waiting_clients.pop(ticket, None)
        if client is not None and client.disconnected:
            self.abandoned += 1
            self._leave_line(ticket)  # the turn passes to the next in line
            message = (
                "The client hung up while its request waited in line for a database "
                "connection: the request was not run."
            )
            raise ClientDisconnectedError(message)

    def _leave_line(self, ticket: object) -> None:
        assert self._line is not None
        self._line.release_on_behalf_of(ticket)


def _request_client() -> Client | None:
    """The HTTP client of the request this task serves, if the web layer named one."""
    waiting = waiting_client.get()
    if waiting is None:
        return None
    task, client = waiting
    return client if asyncio.current_task() is task else None


class PoolCounters:
    """What the pool's events count over the life of one engine."""

    def __init__(
        self, engine: AsyncEngine, ping_after: float | None = None, ping_timeout: float = 5.0
    ) -> None:
        self.engine = engine
        self.invalidated = 0
        self._observing = False
        self.liveness = (
            None if ping_after is None else LivenessCheck(engine, ping_after, ping_timeout)
        )
        event.listen(engine.sync_engine, "invalidate", self._count_invalidation)
        event.listen(engine.sync_engine, "soft_invalidate", self._count_invalidation)

    def close(self) -> None:
        """Stop counting (the engine outlives these counters)."""
        event.remove(self.engine.sync_engine, "invalidate", self._count_invalidation)
        event.remove(self.engine.sync_engine, "soft_invalidate", self._count_invalidation)
        if self.liveness is not None:
            self.liveness.close()
        if self._observing:  # another's observer (a test's counters on the app's engine) stays
            self.observe(None)

    def observe(self, observer: PoolObserver | None) -> None:
        """Tell ``observer`` how long the pool's checkouts wait, its connections are used
        and take to open, from now on; None: no more. Only a :class:`QueuedPool` is measured.

        A checkout's wait ends once it passed the liveness check, whose listener comes before
        this one: a connection found dead there is replaced within the checkout, its opening
        and the failed ping are part of the wait.
        """
        pool, sync_engine = self.engine.pool, self.engine.sync_engine
        if not isinstance(pool, QueuedPool):
            return
        pool.observer = observer
        self._observing = observer is not None
        listening = event.contains(sync_engine, "checkout", self._checked_out)
        if observer is not None and not listening:
            event.listen(sync_engine, "checkout", self._checked_out)
        elif observer is None and listening:
            event.remove(sync_engine, "checkout", self._checked_out)

    def _checked_out(self, dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
        pool = self.engine.pool  # the pool of now: dispose() replaces it
        if isinstance(pool, QueuedPool):
            pool.checked_out(record)

    def _count_invalidation(self, *args: Any) -> None:
        self.invalidated += 1

    def stats(self) -> PoolStats:
        """The pool's numbers now."""
        pool: Any = self.engine.pool
        queued = isinstance(pool, QueuedPool)
        return PoolStats(
            size=pool.size(),
            checked_out=pool.checkedout(),
            checked_in=pool.checkedin(),
            overflow=pool.overflow(),
            invalidated=self.invalidated + (pool.replaced if queued else 0),
            pinged=0 if self.liveness is None else self.liveness.pings,
            waiting=pool.waiting() if queued else 0,
            timeouts=pool.timeouts if queued else 0,
            refused=pool.refused if queued else 0,
            abandoned=pool.abandoned if queued else 0,
        )
