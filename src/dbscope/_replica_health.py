"""The health of a Database's read replicas, checked in the background.

A task per Database checks each replica every ``replica_check_interval``: reachable, still in
recovery (a promoted replica is no replica), of the primary's cluster, and at most
``replica_max_lag`` bytes behind the primary (never seconds: an idle primary makes a replica
0 bytes behind look seconds late). A replica that fails is skipped, and checked again after a
back-off that doubles up to :data:`MAX_BACKOFF_CHECKS` intervals (at most :data:`MAX_BACKOFF`),
so a replica back up serves again within that; one that refuses the connection (its user,
password or database) waits the longest back-off at once. A state is logged once when it
changes, not once per check (and a down replica's reason, when that changes).

A replica run by Patroni may name its member's REST API (``replica_patroni_urls``): it then
serves only while ``GET /replica?lag=<replica_max_lag>`` answers 200 as well, so a member that
Patroni itself holds unfit (being rebuilt, tagged ``noloadbalance``, paused replication) serves
no reads. Asked with httpx (the ``patroni`` extra), within the same check's time bound.

A replica's pool busy with reads is no sign of trouble: when it has no connection free, the
check reads on a connection of its own, opened outside the pool and closed at once (as the
readiness probe does, ``_health.py``), rather than wait in the line of the reads it judges.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.ext.asyncio import AsyncEngine

from dbscope._dialects import Backend, Replication
from dbscope._errors import translate
from dbscope._exceptions import ConfigurationError, DatabaseUnavailableError
from dbscope._lifecycle import Lifecycle
from dbscope._pool import QueuedPool
from dbscope._pool_stats import ReplicaState, ReplicaStats
from dbscope._unavailable import Limits
from dbscope._urls import describe_location, host_ports

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger("dbscope")

MAX_BACKOFF: Final = 30.0
# ... and at most this many check intervals: a replica back up serves again within them
# (measured with a 1 s interval: 12 s after a 20 s outage when only MAX_BACKOFF bounded it).
MAX_BACKOFF_CHECKS: Final = 8


class Replica:
    """One replica: its engine's lifecycle and what the last check found."""

    def __init__(self, name: str, lifecycle: Lifecycle, patroni: str | None = None) -> None:
        self.name = name
        self.lifecycle = lifecycle
        self.patroni = patroni
        self.state: ReplicaState = "starting"
        self.replayed = 0
        self.lag: int | None = None
        self.served = 0
        self.reason: str | None = None
        self.backoff = 0.0
        self.next_check = 0.0
        self._own: AsyncEngine | None = None
        # A URL of several hosts may reach several standbys, each at its own position: what
        # the check read on one says nothing of the server a unit reaches.
        self.several_servers = len(host_ports(lifecycle.settings.url)) > 1

    def stats(self) -> ReplicaStats:
        """The replica's numbers now."""
        pool = self.lifecycle.stats() if self.lifecycle.state == "connected" else None
        return ReplicaStats(self.name, self.state, self.lag, self.served, self.reason, pool)

    def forget(self) -> None:
        """Drop what the checks found: the next life's server may be another."""
        self.state, self.reason, self.lag = "starting", None, None
        self.replayed, self.backoff, self.next_check = 0, 0.0, 0.0

    def busy(self) -> bool:
        """Whether a checkout from the replica's pool would wait: no connection idle, no room
        to open one, or others already waiting. Read without yielding to the event loop, so
        that a checkout right after it finds the pool as it was read."""
        pool = self.lifecycle.engine.pool
        if not isinstance(pool, QueuedPool):
            return False
        room = pool.checkedout() < pool.limits()[1]
        return (pool.checkedin() == 0 and not room) or pool.waiting() > 0

    def own_engine(self, timeout: float) -> AsyncEngine:
        """The check's engine when the replica's pool is busy: each connection its own."""
        if self._own is None:
            lifecycle = self.lifecycle
            url = lifecycle.settings.url
            self._own = lifecycle.own_engine(url, timeout, execution_options=True)
        return self._own

    async def close_own_engine(self) -> None:
        """Drop the check's own engine (it holds no connection between checks)."""
        own, self._own = self._own, None
        if own is not None:
            await own.dispose()


class ReplicaChecks:
    """The checks of one Database's replicas, and the primary's cluster they must belong to.

    Args:
        primary: the primary's lifecycle.
        replicas: the replicas to check.
        rules: the backend's rules (the replication readings).
        name: the Database's name, for the log.
        interval: seconds between two rounds of checks.
        max_lag: bytes a ready replica may be behind the primary.
    """

    def __init__(
        self,
        primary: Lifecycle,
        replicas: list[Replica],
        rules: Backend,
        name: str,
        interval: float,
        max_lag: int,
    ) -> None:
        self.primary = primary
        self.replicas = replicas
        self.rules = rules
        self.name = name
        self.interval = interval
        self.max_lag = max_lag
        self.max_backoff = min(MAX_BACKOFF, MAX_BACKOFF_CHECKS * interval)
        self.cluster = ""
        # How far the primary's log is known to have gone: its last reading, or a later
        # commit's position (Replicas.remember). A write token further than that is checked.
        self.reached = 0
        self._watch: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        if any(replica.patroni for replica in replicas):
            _httpx()  # missing: said at construction, not at the first check

    async def connect(self) -> None:
        """Learn the primary's cluster, check every replica once, then watch them."""
        if any(replica.patroni for replica in self.replicas):
            # In a thread: making the client loads the CA bundle into an SSL context, 24 ms
            # of CPU that held the event loop at each connect().
            client = _httpx().AsyncClient
            self._http = await asyncio.to_thread(lambda: client(follow_redirects=False))
        async with self.primary.engine.connect() as connection:
            self.cluster = (await self.rules.replication(connection)).cluster
        await self.check()
        self._watch = asyncio.get_running_loop().create_task(self._watch_replicas())

    async def dispose(self) -> None:
        """Stop watching, and close every replica's pool; the next connect() starts anew."""
        watch, self._watch = self._watch, None
        if watch is not None and watch.get_loop().is_closed():
            _drop_unfinished(watch)
        elif watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        for replica in self.replicas:
            await replica.lifecycle.dispose()
            await replica.close_own_engine()
            replica.forget()
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()

    async def _watch_replicas(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # the watch must go on; the next round tries again
                logger.exception("Checking the replicas failed")

    async def check(self) -> None:
        """Check each replica due for a check: reachable, a replica of this cluster, its lag."""
        primary = await self._primary_position()
        now = time.monotonic()
        for replica in self.replicas:
            if now >= replica.next_check:
                await self._check(replica, primary)

    async def _primary_position(self) -> int | None:
        try:
            # At least a second: a new connection under load can take longer than a short
            # interval, and without the primary's position no lag is known.
            async with (
                asyncio.timeout(max(self.interval, 1.0)),
                self.primary.engine.connect() as connection,
            ):
                reading = await self.rules.replication(connection)
        except Exception:  # the primary's own troubles are its units' to report
            return None
        if reading.cluster and reading.cluster != self.cluster:
            # Another cluster at the primary's address: tokens and positions of the old one
            # say nothing of its log.
            logger.warning("The primary is another cluster than at connect(); replicas rechecked")
            self.cluster = reading.cluster
            self.reached = 0
            for replica in self.replicas:
                replica.replayed = 0
        self.reached = max(self.reached, reading.position or 0)
        return reading.position

    async def _check(self, replica: Replica, primary: int | None) -> None:
        timeout = max(self.interval, 1.0)
        try:
            async with asyncio.timeout(timeout):
                if replica.lifecycle.state != "connected":
                    await replica.lifecycle.connect()
                # Busy serving reads is no failure: the check does not queue behind them.
                engine = replica.own_engine(timeout) if replica.busy() else None
                async with (engine or replica.lifecycle.engine).connect() as connection:
                    reading = await self.rules.replication(connection)
                unfit = await self._patroni_says(replica)
        except Exception as error:
            refused = isinstance(_translated(error, replica), ConfigurationError)
            self.failed(replica, why(error, replica), refused=refused)
            return
        if unfit is not None and reading.replica:
            self.failed(replica, unfit)
            return
        # Not in recovery (a member Patroni turned down because it leads now): what the
        # server says of itself is the more precise state.
        self._judge(replica, reading, primary)
        if replica.state == "promoted":
            # Its pooled connections stay on the node promoted; new ones go where the URL
            # leads now (a URL of the cluster's hosts asking for a standby, a moving
            # address): the next check asks there. Kept, the replica never served again.
            await replica.lifecycle.engine.dispose()

    async def _patroni_says(self, replica: Replica) -> str | None:
        """Why the replica's Patroni member is unfit to serve reads; None when it is fit."""
        if replica.patroni is None or self._http is None:
            return None
        try:
            answer = await self._http.get(f"{replica.patroni}/replica?lag={self.max_lag}")
        except _httpx().HTTPError:
            return "its Patroni REST API could not be reached"
        if answer.status_code == 200:
            return None
        return f"Patroni's /replica check answered {answer.status_code}"

    def _judge(self, replica: Replica, reading: Replication, primary: int | None) -> None:
        replica.backoff = 0.0
        if not reading.replica:
            replica.lag = None  # a primary is behind no one: no lag to report
            # Said once, at the first reading out of recovery: what it was before tells why.
            reason = replica.reason if replica.state == "promoted" else None
            self._set(replica, "promoted", reason or _why_primary(replica, reading, self.cluster))
        elif self.cluster and reading.cluster != self.cluster:
            replica.lag = None  # bytes of another cluster's log say nothing of this one's
            self._set(replica, "foreign", "it replicates another cluster than the primary's")
        else:
            # As the replica says, even backwards (a replica made anew from a backup): a
            # position it no longer has would let reads skip their check.
            replica.replayed = reading.position or 0
            if primary is not None:
                replica.lag = max(0, primary - replica.replayed)
            if replica.lag is not None and replica.lag > self.max_lag:
                reason = f"{replica.lag} bytes behind, more than replica_max_lag={self.max_lag}"
                self._set(replica, "lagging", reason)
            else:
                self._set(replica, "ready", None)

    def failed(self, replica: Replica, reason: str, *, refused: bool = False) -> None:
        """Take ``replica`` out of service for ``reason``, until a check after the back-off
        (the longest at once when it ``refused`` the connection: settings do not mend
        themselves in a second)."""
        backoff = max(self.interval, replica.backoff * 2)
        replica.backoff = self.max_backoff if refused else min(self.max_backoff, backoff)
        replica.next_check = time.monotonic() + replica.backoff
        replica.lag = None  # the last reading's lag is no reading of a replica out of reach
        self._set(replica, "down", reason)

    def _set(self, replica: Replica, state: ReplicaState, reason: str | None) -> None:
        # Logged once per change, not once per check; a down replica's new reason is news
        # (unreachable, then up but refusing the connection), a lagging one's bytes are not.
        if state != replica.state or (state == "down" and reason != replica.reason):
            where = describe_location(replica.lifecycle.settings.url)
            if state == "ready":
                logger.info("Replica %s of Database %r serves reads", where, self.name)
            else:
                message = "Replica %s of Database %r serves no reads: %s"
                logger.warning(message, where, self.name, reason)
        replica.state, replica.reason = state, reason


def _why_primary(replica: Replica, reading: Replication, cluster: str) -> str:
    """Why a replica found out of recovery serves no reads: promoted since it was last seen,
    or, the first time it is checked, a primary of the cluster from the start (most often
    the primary itself under another name: localhost for 127.0.0.1, a pooler's port)."""
    if replica.state != "starting" or (cluster and reading.cluster != cluster):
        return "it is no longer in recovery: a primary now"
    return (
        "it is a primary of this cluster, not in recovery, since its first check: the primary "
        "itself under another name (localhost for 127.0.0.1, a pooler in front of it) or a "
        "standby promoted before; give the URL of a standby"
    )


def _httpx() -> Any:
    try:
        import httpx  # only when a Patroni URL is given
    except ImportError:
        message = (
            "replica_patroni_urls asks each replica's Patroni REST API, which needs httpx: "
            "pip install 'dbscope[patroni]'"
        )
        raise ConfigurationError(message) from None
    return httpx


def why(error: Exception, replica: Replica) -> str:
    """Why ``error`` takes ``replica`` out of service, phrased from the error's kind (a
    driver's message could name the user or more), or a refusal's own message, which says
    what to fix and never holds a password (``_errors.py``)."""
    if isinstance(error, TimeoutError):
        return "it did not answer in time"
    translated = _translated(error, replica)
    if isinstance(translated, DatabaseUnavailableError):
        return "it could not be reached"
    if isinstance(translated, ConfigurationError):
        return str(translated)
    return f"checking it failed ({type(translated or error).__name__})"


def _translated(error: Exception, replica: Replica) -> Exception | None:
    if isinstance(error, DatabaseUnavailableError | ConfigurationError):
        return error  # already dbscope's: connect() translates its own
    return translate(error, Limits(replica.lifecycle.settings.url))


def _drop_unfinished(task: asyncio.Task[None]) -> None:
    """Let go of a task whose event loop closed without cancelling it (``loop.close()`` after
    ``run_until_complete``): cancelling it asks that loop ("Event loop is closed"), so its
    coroutine is closed here instead, and asyncio told not to log it as destroyed pending."""
    coroutine = task.get_coro()  # None (Python 3.12+) only for a task run eagerly to its end
    if coroutine is not None:
        coroutine.close()
    task._log_destroy_pending = False  # type: ignore[attr-defined]  # asyncio's own switch
