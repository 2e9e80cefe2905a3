"""A first-come, first-served wait line of bounded length in front of the pool.

SQLAlchemy's asyncio pool waits on an ``asyncio.Queue``: a request that arrives just as a
connection comes back takes it ahead of the waiter that was woken for it, who queues again,
so under load some requests wait the whole ``pool_timeout`` while newcomers are served at
once. And every excess request waits: when the pool cannot keep up, each one holds its client
for ``pool_timeout`` before it is told so.

``QueuedPool`` puts a line in front of the checkout. A connection handed back goes to the
longest waiter, never to a newcomer; with ``max_waiters`` set, a request arriving when the
line is full fails at once (503 in FastAPI) instead of waiting its turn to time out. The line
is anyio's ``CapacityLimiter``, holding one token per connection the pool may open.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import anyio
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.pool import AsyncAdaptedQueuePool, ConnectionPoolEntry
from sqlalchemy.util import await_only


class LineFullError(PoolTimeoutError):
    """The pool is exhausted and ``max_waiters`` checkouts already wait: refused at once."""


class QueuedPool(AsyncAdaptedQueuePool):
    """``AsyncAdaptedQueuePool`` behind a fair wait line of at most ``max_waiters``.

    Args:
        creator: as for every SQLAlchemy pool.
        max_waiters: how many checkouts may wait for a connection at once; None for no bound.
        **options: ``AsyncAdaptedQueuePool``'s own (``pool_size``, ``max_overflow``,
            ``timeout``...).
    """

    def __init__(self, creator: Any, max_waiters: int | None = None, **options: Any) -> None:
        super().__init__(creator, **options)
        self.max_waiters = max_waiters
        # Created in the event loop, at the first checkout: anyio's limiter belongs to one.
        self._line: anyio.CapacityLimiter | None = None
        self._tickets: dict[ConnectionPoolEntry, object] = {}

    def recreate(self) -> QueuedPool:
        """A fresh pool with the same settings (SQLAlchemy's dispose() replaces the pool)."""
        pool = super().recreate()
        assert isinstance(pool, QueuedPool)
        pool.max_waiters = self.max_waiters
        return pool

    def waiting(self) -> int:
        """How many checkouts wait in line now."""
        return 0 if self._line is None else self._line.statistics().tasks_waiting

    def _do_get(self) -> ConnectionPoolEntry:
        ticket = object()
        self._enter_line(ticket)
        try:
            record = super()._do_get()
        except BaseException:
            self._leave_line(ticket)
            raise
        self._tickets[record] = ticket
        return record

    def _do_return_conn(self, record: ConnectionPoolEntry) -> None:
        ticket = self._tickets.pop(record, None)
        try:
            super()._do_return_conn(record)
        finally:
            if ticket is not None:
                self._leave_line(ticket)

    def _enter_line(self, ticket: object) -> None:
        line = self._line
        if line is None:
            unbounded = self._max_overflow < 0  # SQLAlchemy's -1: no limit
            capacity = math.inf if unbounded else self.size() + self._max_overflow
            line = self._line = anyio.CapacityLimiter(capacity)
        try:
            line.acquire_on_behalf_of_nowait(ticket)  # no await when a connection is free
            return
        except anyio.WouldBlock:
            pass
        if self.max_waiters is not None and self.waiting() >= self.max_waiters:
            message = (
                f"The connection pool is exhausted and {self.max_waiters} requests already "
                f"wait for a connection (pool_max_waiters={self.max_waiters}); "
                "answered at once instead of queueing."
            )
            raise LineFullError(message, code="3o7r")
        await_only(self._wait_in_line(line, ticket))

    async def _wait_in_line(self, line: anyio.CapacityLimiter, ticket: object) -> None:
        try:
            # asyncio's own timeout: SQLAlchemy's asyncio pool runs on asyncio only, and it
            # costs a fraction of an anyio cancel scope on this path, which every waiter takes.
            async with asyncio.timeout(self._timeout):
                await line.acquire_on_behalf_of(ticket)
        except TimeoutError:
            message = (
                f"QueuePool limit of size {self.size()} overflow {self._max_overflow} reached, "
                f"connection timed out, timeout {self._timeout:.2f}"
            )
            raise PoolTimeoutError(message, code="3o7r") from None

    def _leave_line(self, ticket: object) -> None:
        assert self._line is not None
        self._line.release_on_behalf_of(ticket)
