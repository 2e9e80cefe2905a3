"""The states of a Database's engine, and one message for each wrong move.

::

    new ──connect()──▶ connected ──dispose()──▶ disposed ──connect()──▶ connected ...

and, for tests, ``bind_to(connection)`` puts any state in ``bound`` for the length of a
``with`` block: every unit of work then runs inside that connection's transaction.

``connect()`` builds the engine inside the running event loop and proves the server answers;
``dispose()`` closes every pooled connection and is idempotent. A disposed engine can be
connected again, so one module-level ``db`` serves consecutive app lifespans (two TestClient
blocks, two test functions on different event loops).

An :class:`EngineObserver` (``dbscope.otel``) follows the engine across these states: told of
each engine ``connect()`` builds and each one ``dispose()`` ends, it never holds one beyond
its life. A bound test connection is not announced: it is the test's, not the pool's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal, Protocol

from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.pool import NullPool

from dbscope import _forks as forks
from dbscope._async_session import UnitAsyncSession, session_factory
from dbscope._dialects import CLOSE_TIMEOUT, ClosedIfCancelled, backend, driver
from dbscope._durability import DurabilityWatch
from dbscope._engine import (
    ServerInfo,
    build_engine,
    let_go_of_closed_loop_pool,
    ping_after,
    verify,
)
from dbscope._exceptions import ConfigurationError, LifecycleError
from dbscope._pool import PoolCounters
from dbscope._pool_stats import PoolStats
from dbscope._settings import DatabaseSettings
from dbscope._usage_errors import connected_beside_a_test

logger = logging.getLogger("dbscope")
# The engine options a connection of its own is opened with, as the pool opens its.
CONNECT_OPTIONS: Final = ("connect_args", "async_creator")

State = Literal["new", "connected", "disposed", "bound"]
# Where the test connections that Databases are bound to lead, while they are: a Database
# that connects elsewhere meanwhile (an app's second one, forgotten) writes for real.
_bound_targets: Counter[tuple[str, str | None, int | None, str | None]] = Counter()


def _target(url: URL) -> tuple[str, str | None, int | None, str | None]:
    """Which database ``url`` leads to, as far as the URL says (a port left out is the
    server's default one: the plugin's URL and the app's may spell it or not)."""
    rules = backend(url.get_backend_name())  # "mariadb" and "mysql" are one server's names
    return (rules.name, url.host, url.port or rules.default_port, url.database)


class EngineObserver(Protocol):
    """Follows a Database's engines: each from ``connect()`` to ``dispose()``."""

    def engine_started(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """``engine`` is connected; ``counters`` count its pool's events."""

    def engine_stopped(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """``engine`` is about to be disposed (or the observer to be removed)."""


class Lifecycle:
    """The engine, pool and sessionmaker of one Database, and the state they are in.

    Args:
        settings: the validated settings.
        options: the checked ``create_async_engine`` options.
        label: how messages name the Database (its repr, which masks the password).
        session_class: the class of its sessions (``_session.unit_session_class``).

    Attributes:
        retries: units of work re-run after a conflict, over the Database's life.
        held: requests held until their client's Retry-After had passed, over its life
            (``dbscope.fastapi``'s early retries).
        rereads: read-only units whose first statement met a lost connection and ran again
            on a fresh one, over its life.
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        options: Mapping[str, Any],
        label: str,
        session_class: type[UnitAsyncSession] = UnitAsyncSession,
    ):
        self.settings = settings
        self.options = options
        self.label = label
        self.session_class = session_class
        self.state: State = "new"
        self.server: ServerInfo | None = None
        self._engine: AsyncEngine | None = None
        self._counters: PoolCounters | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.retries = 0
        self.held = 0
        self.rereads = 0
        self._observers: list[EngineObserver] = []
        # The engine connect() built and its counters, until dispose(); never a bound one.
        self._running: tuple[AsyncEngine, PoolCounters] | None = None
        self.durability = DurabilityWatch(label)
        self._connect_guard = threading.Lock()
        self._connecting = False
        # Pools a forked child inherited and let go of (let_go_of_pool()).
        self._inherited: list[object] = []

    def count_retry(self) -> None:
        """Count one unit of work re-run after a conflict."""
        self.retries += 1

    def count_reread(self) -> None:
        """Count one read-only unit's first statement run again after a lost connection."""
        self.rereads += 1

    def count_held(self) -> None:
        """Count one request held until its client's Retry-After had passed."""
        self.held += 1

    def observe(self, observer: EngineObserver) -> None:
        """Tell ``observer`` of the engine now (if connected) and of each one to come."""
        self._observers.append(observer)
        if self._running is not None:
            observer.engine_started(*self._running)

    def unobserve(self, observer: EngineObserver) -> None:
        """Stop telling ``observer``; it hears of the running engine's end. Idempotent."""
        if observer not in self._observers:
            return
        self._observers.remove(observer)
        if self._running is not None:
            observer.engine_stopped(*self._running)

    async def connect(self) -> None:
        """Build the engine in the running loop and prove the server answers."""
        if self.state == "bound":
            return  # a test owns the connection; the app's lifespan leaves it alone
        # Checked and marked at once, before the first await: a second connect() while the
        # first one waits for the server (two lifespans, or two threads' loops) would build
        # an engine of its own, and the first one's pool would be lost, never disposed.
        with self._connect_guard:
            if self.state == "connected" or self._connecting:
                message = (
                    f"{self.label} is already connected (or connecting): connect() was called "
                    "twice, or two lifespans or event loops share it. Call dispose() before "
                    "connecting again, or use only one of `async with db:`, `await "
                    "db.connect()` and `FastAPI(lifespan=db.lifespan)`; a thread with an "
                    "event loop of its own needs a Database of its own."
                )
                raise LifecycleError(message)
            self._connecting = True
        try:
            await self._connect()
        finally:
            self._connecting = False

    async def _connect(self) -> None:
        engine = build_engine(self.settings, self.options)
        engine, self.server, standbys = await verify(engine, self.settings, self.options)
        await self._warn_if_beside_a_test(engine)
        self._engine = engine
        self._counters = PoolCounters(
            engine, ping_after(self.settings), ping_timeout=self.settings.connect_timeout
        )
        self._sessions = session_factory(
            bind=engine,
            raise_on_lazy_load=self.settings.raise_on_lazy_load,
            session_class=self.session_class,
        )
        self._loop = asyncio.get_running_loop()
        self.state = "connected"
        forks.connected.add(self)
        self._running = (engine, self._counters)
        self.durability.update(standbys)
        self.durability.watch(engine, self.options)
        for observer in self._observers:
            observer.engine_started(engine, self._counters)
        logger.info(
            "Connected to %s %s at %r (pool_size=%s, max_overflow=%s, pool_timeout=%ss)",
            self.server.backend,
            ".".join(map(str, self.server.version)),
            self.settings.url,
            self.settings.pool_size,
            self.settings.max_overflow,
            self.settings.pool_timeout,
        )

    async def _warn_if_beside_a_test(self, engine: AsyncEngine) -> None:
        """Warn of a Database that has just connected to a database of its own while a test
        binds another Database to its connection: its writes are real. Only once connected:
        a Database that cannot connect (a test of an unreachable server) raises its own
        error, not the warning that filterwarnings=error makes one; and an in-memory SQLite
        database keeps nothing past the process."""
        if not _bound_targets or self.settings.is_memory:
            return
        if _target(self.settings.url) in _bound_targets:
            return
        try:
            warnings.warn(connected_beside_a_test(self.label), RuntimeWarning, stacklevel=4)
        except BaseException:  # raised as an error: the engine is not kept, nor leaked
            await engine.dispose()
            raise

    async def dispose(self) -> None:
        """Close every pooled connection; again, or before connect(), it does nothing."""
        if self.state == "bound":
            return  # the binding test closes its own connection
        if self._engine is not None:
            engine, self._engine, self._sessions = self._engine, None, None
            counted = getattr(engine.sync_engine.pool, "checkedout", None)  # not NullPool
            busy = counted() if counted is not None else 0
            if busy:
                # Tasks the app started (asyncio.create_task) were then cancelled by the
                # loop's end, their work lost without a word. Requests a server cancelled at
                # its graceful shutdown's timeout are still unwinding here too.
                logger.warning(
                    "Disposing of the connection pool with %d connection(s) still in use: "
                    "units of work still run (tasks the app started, or requests the server "
                    "cancelled at its graceful shutdown's timeout), and will lose their "
                    "connection. Wait for them before the Database's lifespan ends.",
                    busy,
                )
            self.state = "disposed"
            forks.connected.discard(self)
            running, self._running = self._running, None
            if running is not None:
                for observer in self._observers:
                    observer.engine_stopped(*running)
            await self.durability.close()
            if self._loop is not None and self._loop.is_closed():
                let_go_of_closed_loop_pool(engine)  # its connections cannot be closed politely
            else:
                await engine.dispose()
            # A connect a cancel cut short goes on alone: its connection is closed before
            # the app's loop ends (a connect within connect_timeout, a close within CLOSE).
            creator = self.options.get("connect_args", {}).get("async_creator_fn")
            if isinstance(creator, ClosedIfCancelled):
                await creator.settle(self.settings.connect_timeout + CLOSE_TIMEOUT)
            logger.info("Disposed the connection pool of %r", self.settings.url)

    def let_go_of_pool(self) -> None:
        """Replace the pool with an empty one, leaving its connections untouched (a forked
        child's, ``_forks.py``). The inherited ones are kept, never collected, so that no
        driver's finalizer closes or warns of a connection the parent still uses."""
        if self._engine is not None and self.state == "connected":
            self._inherited.append(self._engine.sync_engine.pool)
            self._engine.sync_engine.dispose(close=False)

    @contextlib.contextmanager
    def bind_to(self, connection: AsyncConnection, *, raise_on_lazy_load: bool) -> Iterator[None]:
        """Make every session join ``connection``'s transaction, with savepoints.

        Raises:
            ConfigurationError: ``connection`` is no ``AsyncConnection``, or no event loop
                runs; the Database is left as it was.
        """
        if not isinstance(connection, AsyncConnection):
            message = (
                f"bind_to() takes the AsyncConnection of a test's transaction (`async with "
                f"engine.connect() as connection:`), not {type(connection).__name__}"
            )
            raise ConfigurationError(message)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            message = "bind_to() binds within the event loop the test runs in: call it there"
            raise ConfigurationError(message) from None
        saved = (self.state, self._engine, self._sessions, self._loop, self._counters)
        target = _target(connection.engine.url)
        _bound_targets[target] += 1
        try:
            self.state, self._engine, self._loop = "bound", connection.engine, loop
            self._counters = PoolCounters(connection.engine)
            self._sessions = session_factory(
                bind=connection,
                join_transaction_mode="create_savepoint",
                raise_on_lazy_load=raise_on_lazy_load,
                session_class=self.session_class,
            )
            yield
        finally:
            if self._counters is not None and self._counters is not saved[4]:
                self._counters.close()
            self.state, self._engine, self._sessions, self._loop, self._counters = saved
            _bound_targets[target] -= 1
            if not _bound_targets[target]:
                del _bound_targets[target]

    def own_engine(
        self, url: URL, timeout: float, *, execution_options: bool = False
    ) -> AsyncEngine:
        """An engine on ``url`` whose every connection is new and closed after use
        (NullPool), for checks that must never wait in the pool's line nor hold a connection
        between them. It connects as the pool does (the app's connect arguments: TLS, server
        settings, statement cache), but within ``timeout``, with the engine's execution
        options too if asked (a replica's every transaction READ ONLY)."""
        names: tuple[str, ...] = CONNECT_OPTIONS
        if execution_options:
            names = (*names, "execution_options")
        if url.get_driver_name() != self.settings.url.get_driver_name():
            # A test's database on another driver than the app's (an app made for SQLite,
            # tested on PostgreSQL): the app's connect arguments are not this driver's.
            names = tuple(name for name in names if name not in CONNECT_OPTIONS)
        options = {name: self.options[name] for name in names if name in self.options}
        known = driver(url.get_driver_name())
        if known is not None:  # only the timeout's own arguments are replaced
            connect_args = options.get("connect_args", {})
            own_args = known.connect_args(timeout, None)
            if isinstance(creator := connect_args.get("async_creator_fn"), ClosedIfCancelled):
                own_args["async_creator_fn"] = creator  # dispose() waits for its connects
            options["connect_args"] = {**connect_args, **own_args}
        return create_async_engine(url, poolclass=NullPool, **options)

    def session_maker(self) -> async_sessionmaker[AsyncSession]:
        """The sessionmaker, if the engine exists and belongs to the running loop."""
        if self._sessions is None:
            raise LifecycleError(self.not_connected_message())
        if self._loop is not asyncio.get_running_loop():
            raise LifecycleError(self.other_loop_message())
        return self._sessions

    def other_loop_message(self) -> str:
        """Why a unit of work is refused in this loop, and the fix for how it got here."""
        if self.state == "bound":
            # Bound by a test: what runs in another loop is nearly always an app served by
            # Starlette's TestClient, which runs it in a thread with a loop of its own.
            return (
                f"{self.label} is bound to a test's connection, which belongs to the test's "
                "event loop, and this unit of work runs in another loop (as every request "
                "sent through Starlette's or FastAPI's TestClient does: it serves the app in a "
                "thread with a loop of its own). Send the test's requests in its own loop: "
                "the plugin's dbscope_client, or dbscope.testing.client(app), an "
                "httpx.AsyncClient."
            )
        return (
            f"{self.label} was connected in another event loop; an engine cannot move "
            "between loops. Dispose it and connect again in this loop (for tests: connect "
            "in a fixture that runs in the test's loop)."
        )

    def bind(self) -> AsyncEngine | AsyncConnection:
        """What units of work run on: the engine, or while bound, the test's connection.

        The same checks as session_maker(): connected, and in the running loop.
        """
        bind: AsyncEngine | AsyncConnection = self.session_maker().kw["bind"]
        return bind

    @property
    def engine(self) -> AsyncEngine:
        """The AsyncEngine, between connect() and dispose()."""
        if self._engine is None:
            raise LifecycleError(self.not_connected_message())
        return self._engine

    def stats(self) -> PoolStats:
        """The pool's numbers now."""
        if self._counters is None or self._engine is None:
            raise LifecycleError(self.not_connected_message())
        stats = dataclasses.replace(self._counters.stats(), held=self.held, rereads=self.rereads)
        if self.state == "connected" and self.durability.reading is not None:
            stats = dataclasses.replace(stats, durability=self.durability.reading)
        return stats

    def not_connected_message(self) -> str:
        """What to say when the engine is needed and there is none."""
        if self.state == "disposed":
            return (
                f"{self.label} was disposed (its lifespan ended or dispose() was called). "
                "Call `await db.connect()` or enter `async with db:` again before using it."
            )
        return (
            f"{self.label} is not connected yet. In FastAPI pass lifespan=db.lifespan to "
            "FastAPI(...) (or enter `async with db.lifespan(app):` in your own lifespan); "
            "elsewhere use `async with db:` or `await db.connect()` first."
        )
