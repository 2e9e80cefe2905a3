"""Read replicas: whole read-only units routed to a replica that has the writes they must see.

A unit's place is fixed when it begins: read-write units (``db.session``, ``transaction()``,
retried units) run on the primary; read-only units (``db.read_session``,
``transaction(read_only=True)``, ``parallel()``, read-only streams) on a ready replica, else
on the primary. Statements are never routed one by one, so a read-then-write unit never reads
a replica.

Read-your-writes, by log position. After each commit of a unit on the primary, the primary's
log position is read on the same connection as it returns to the pool (``_capture``), and
kept as a :class:`WriteToken` in the context's :class:`TokenJar`. A read-only unit that
carries a token runs on a replica only once the replica has replayed that far: known from the
last reading, or asked on the unit's own connection, waited for up to ``replica_wait``; else
the unit reads the primary. A token of another cluster is ignored.

Health. A task per Database checks each replica every ``replica_check_interval``: reachable,
still in recovery (a promoted replica is no replica), of the primary's cluster, and at most
``replica_max_lag`` bytes behind the primary (never seconds: an idle primary makes a replica
0 bytes behind look seconds late). A replica that fails is skipped, and checked again after a
back-off that doubles up to :data:`MAX_BACKOFF_CHECKS` intervals (at most :data:`MAX_BACKOFF`),
so a replica back up serves again within that. A unit whose replica cannot give it a
connection runs on the primary instead: no rows were returned yet, so nothing is read twice.
Every read that falls back to the primary is counted, with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

from dbscope._dialects import Backend, Replication, backend
from dbscope._errors import Limits, translate
from dbscope._exceptions import DatabaseUnavailableError
from dbscope._lifecycle import Lifecycle
from dbscope._pool import PoolCounters, ReplicaState, ReplicaStats
from dbscope._session import WRITER, UnitState
from dbscope._settings import DatabaseSettings, default_pool_name
from dbscope._unit_of_work import MakeUnit, UnitOfWork, UnitOptions
from dbscope._urls import describe_location
from dbscope._write_tokens import WriteToken, current_jar

logger = logging.getLogger("dbscope")

# On a pooled connection's info: its transaction committed (set just before the COMMIT).
COMMITTED: Final = "dbscope.committed"
# A position no replica reaches: a write whose position could not be read sends the reads
# that follow it to the primary.
UNKNOWN_POSITION: Final = (1 << 64) - 1
MAX_BACKOFF: Final = 30.0
# ... and at most this many check intervals: a replica back up serves again within them
# (measured with a 1 s interval: 12 s after a 20 s outage when only MAX_BACKOFF bounded it).
MAX_BACKOFF_CHECKS: Final = 8
# How often a read that waits for a replica asks it again.
CATCH_UP_STEP: Final = 0.002
# Isolation levels whose snapshot is taken at the unit's first statement, the replay check:
# a replica could not promise a snapshot with the token's writes, so such reads carrying a
# token run on the primary.
SNAPSHOT_LEVELS: Final = frozenset({"REPEATABLE READ", "SERIALIZABLE"})
# Levels a hot standby refuses ("cannot use serializable mode in a hot standby"): such units
# always run on the primary.
PRIMARY_LEVELS: Final = frozenset({"SERIALIZABLE"})


class Replica:
    """One replica: its engine's lifecycle and what the last check found."""

    def __init__(self, name: str, lifecycle: Lifecycle) -> None:
        self.name = name
        self.lifecycle = lifecycle
        self.state: ReplicaState = "starting"
        self.replayed = 0
        self.lag: int | None = None
        self.served = 0
        self.reason: str | None = None
        self.backoff = 0.0
        self.next_check = 0.0

    def stats(self) -> ReplicaStats:
        """The replica's numbers now."""
        pool = self.lifecycle.stats() if self.lifecycle.state == "connected" else None
        return ReplicaStats(self.name, self.state, self.lag, self.served, self.reason, pool)


class Replicas:
    """The replicas of one Database: routing, write tokens and health checks.

    Args:
        settings: the Database's settings (their ``database_replica_urls`` and bounds).
        options: its engine options, which each replica's engine gets too.
        primary: the primary's lifecycle.
        name: the Database's name, which the replicas' names start from.
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        options: Mapping[str, Any],
        primary: Lifecycle,
        name: str,
    ) -> None:
        self.primary = primary
        self.name = name
        self.rules: Backend = backend(settings.url.get_backend_name())
        self.max_lag = int(settings.replica_max_lag)
        self.wait = settings.replica_wait
        self.interval = settings.replica_check_interval
        self.max_backoff = min(MAX_BACKOFF, MAX_BACKOFF_CHECKS * self.interval)
        self.cluster = ""
        self.fallbacks: Counter[str] = Counter()
        self.replicas = [
            self._replica(settings, options, url, name) for url in settings.database_replica_urls
        ]
        self._turn = 0
        self._watch: asyncio.Task[None] | None = None
        primary.observe(self)

    def _replica(
        self, settings: DatabaseSettings, options: Mapping[str, Any], url: Any, primary_name: str
    ) -> Replica:
        replica_settings = settings.for_replica(url)
        name = default_pool_name(url)
        if settings.pool_name is not None:
            name = f"{primary_name} replica {name}"
        label = f"replica {name!r} of {primary_name!r}"
        # Every transaction on a replica begins READ ONLY, its checks' too: psycopg begins
        # with READ WRITE once SQLAlchemy reset a read-only unit's connection (to False, not to
        # unset), and a hot standby refuses that (measured: every check after the first read).
        execution = dict(options.get("execution_options") or {})
        execution.update(dict.fromkeys(self.rules.read_only_view, True))
        replica_options = {**options, "execution_options": execution}
        sessions = self.primary.session_class
        return Replica(name, Lifecycle(replica_settings, replica_options, label, sessions))

    # -- routing -----------------------------------------------------------------------------

    def routes(self) -> bool:
        """Whether read-only units are routed now: not while a test binds the Database."""
        return self.primary.state == "connected"

    async def open_read(self, make: MakeUnit, options: UnitOptions, after: object) -> UnitOfWork:
        """A read-only unit on a replica that has the writes it must see, else on the primary."""
        token = self._token(options, after)
        level = options.isolation_level
        if level in PRIMARY_LEVELS or (token is not None and level in SNAPSHOT_LEVELS):
            return self._on_primary(make, "isolation_level")
        if token is not None and token.position == UNKNOWN_POSITION:
            return self._on_primary(make, "behind")  # no replica will ever say it has it
        replica = self._choose(token)
        if replica is None:
            return self._on_primary(make, "no_replica_ready")
        unit = make(replica.lifecycle.session_maker())
        try:
            connection = await unit.session.connection()  # checks out, and begins
            behind = token is not None and replica.replayed < token.position
            if behind and not await self._catch_up(replica, connection, token):
                await _discard(unit)
                return self._on_primary(make, "behind")
        except Exception as error:
            await _discard(unit)
            outage = translate(error, Limits(replica.lifecycle.settings.url))
            if not isinstance(outage, DatabaseUnavailableError):
                raise
            if outage.cause != "pool_timeout":  # a busy replica is no sick one
                self._failed(replica, _why(error, replica))
            return self._on_primary(make, outage.cause)
        except BaseException:
            # Cancelled while checking out or waiting for the replica: nobody else holds
            # the unit to end it (measured: psycopg's connection stayed checked out until
            # the garbage collector dropped it).
            await _discard(unit)
            raise
        replica.served += 1
        return unit

    def remember(self, position: int) -> None:
        """Keep the primary's position after a commit as this context's write token."""
        jar = current_jar(create=True)
        assert jar is not None
        jar.add(WriteToken(self.cluster, position))

    def write_token(self) -> WriteToken | None:
        """The latest write of this context on this Database's cluster, if any."""
        jar = current_jar()
        return None if jar is None else jar.get(self.cluster)

    def _token(self, options: UnitOptions, after: object) -> WriteToken | None:
        """The write the unit must see: the later of ``after`` and this context's own."""
        if options.stale_ok or not self.cluster:
            return None
        own = self.write_token()
        # Another cluster's position says nothing of this one's log.
        given = after if isinstance(after, WriteToken) and after.cluster == self.cluster else None
        if own is None or (given is not None and given.position > own.position):
            return given
        return own

    def _choose(self, token: WriteToken | None) -> Replica | None:
        ready = [replica for replica in self.replicas if replica.state == "ready"]
        if not ready:
            return None
        if token is not None:
            # Those known to have the write first; else the one furthest along, to ask.
            caught_up = [replica for replica in ready if replica.replayed >= token.position]
            if not caught_up:
                return max(ready, key=lambda replica: replica.replayed)
            ready = caught_up
        self._turn += 1
        return ready[self._turn % len(ready)]

    async def _catch_up(
        self, replica: Replica, connection: AsyncConnection, token: WriteToken | None
    ) -> bool:
        assert token is not None
        position = token.position
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait
        while True:
            if await self.rules.replayed(connection, position):
                replica.replayed = max(replica.replayed, position)
                return True
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(CATCH_UP_STEP)

    def _on_primary(self, make: MakeUnit, reason: str) -> UnitOfWork:
        self.fallbacks[reason] += 1
        return make(None)

    # -- the primary's commits ---------------------------------------------------------------

    def engine_started(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """Read the log position after each commit on ``engine`` (the primary's)."""
        event.listen(engine.sync_engine, "commit", _mark_commit)
        event.listen(engine.sync_engine, "reset", self._capture)

    def engine_stopped(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """Stop reading positions on ``engine``."""
        event.remove(engine.sync_engine, "commit", _mark_commit)
        event.remove(engine.sync_engine, "reset", self._capture)

    def _capture(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, reset: PoolResetState
    ) -> None:
        # The connection is back from a unit, its transaction over: read the position now,
        # after the COMMIT (one taken inside the transaction would come before its own commit
        # record), and before anyone else uses the connection.
        state = record.info.pop(WRITER, None)
        if not (record.info.pop(COMMITTED, False) and isinstance(state, UnitState)):
            return
        try:
            if reset.terminate_only or not reset.asyncio_safe:
                # Collected, not returned: nothing may be asked of it now.
                raise RuntimeError("the connection was not returned by its unit")
            position = self.rules.write_position(dbapi_connection)
        except Exception:
            logger.warning(
                "Could not read the primary's log position after a commit; the "
                "reads that follow it go to the primary.",
                exc_info=True,
            )
            position = UNKNOWN_POSITION
        state.write_position = max(state.write_position or 0, position)

    # -- health ------------------------------------------------------------------------------

    async def connect(self) -> None:
        """Learn the primary's cluster, check every replica once, then watch them."""
        async with self.primary.engine.connect() as connection:
            self.cluster = (await self.rules.replication(connection)).cluster
        await self.check()
        self._watch = asyncio.get_running_loop().create_task(self._watch_replicas())

    async def dispose(self) -> None:
        """Stop watching, and close every replica's pool; the next connect() starts anew."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
        for replica in self.replicas:
            await replica.lifecycle.dispose()
            # Nothing of this life holds for the next: the server may be another by then.
            replica.state, replica.reason, replica.lag = "starting", None, None
            replica.replayed, replica.backoff, replica.next_check = 0, 0.0, 0.0

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
            for replica in self.replicas:
                replica.replayed = 0
        return reading.position

    async def _check(self, replica: Replica, primary: int | None) -> None:
        try:
            async with asyncio.timeout(max(self.interval, 1.0)):
                if replica.lifecycle.state != "connected":
                    await replica.lifecycle.connect()
                async with replica.lifecycle.engine.connect() as connection:
                    reading = await self.rules.replication(connection)
        except Exception as error:
            self._failed(replica, _why(error, replica))
            return
        self._judge(replica, reading, primary)

    def _judge(self, replica: Replica, reading: Replication, primary: int | None) -> None:
        replica.backoff = 0.0
        if not reading.replica:
            self._set(replica, "promoted", "it is no longer in recovery: a primary now")
        elif self.cluster and reading.cluster != self.cluster:
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

    def _failed(self, replica: Replica, reason: str) -> None:
        replica.backoff = min(self.max_backoff, max(self.interval, replica.backoff * 2))
        replica.next_check = time.monotonic() + replica.backoff
        self._set(replica, "down", reason)

    def _set(self, replica: Replica, state: ReplicaState, reason: str | None) -> None:
        if state != replica.state:  # logged once per change, not once per check
            where = describe_location(replica.lifecycle.settings.url)
            if state == "ready":
                logger.info("Replica %s of Database %r serves reads", where, self.name)
            else:
                message = "Replica %s of Database %r serves no reads: %s"
                logger.warning(message, where, self.name, reason)
        replica.state, replica.reason = state, reason

    def stats(self) -> tuple[ReplicaStats, ...]:
        """Each replica's numbers now."""
        return tuple(replica.stats() for replica in self.replicas)


def _mark_commit(connection: Connection) -> None:
    connection.info[COMMITTED] = True


def _why(error: Exception, replica: Replica) -> str:
    # Phrased from the error's kind: a driver's message could name the user or more.
    if isinstance(error, TimeoutError):
        return "it did not answer in time"
    if isinstance(error, DatabaseUnavailableError):
        return "it could not be reached"
    translated = translate(error, Limits(replica.lifecycle.settings.url))
    if isinstance(translated, DatabaseUnavailableError):
        return "it could not be reached"
    return f"checking it failed ({type(translated or error).__name__})"


async def _discard(unit: UnitOfWork) -> None:
    """End a unit that was not handed out: its connection back, or dropped if broken."""
    unit.state.ended = True
    try:
        # AsyncSession's own exit closes to completion, even if the task is cancelled again.
        await unit.session.__aexit__(None, None, None)
    except Exception:
        with contextlib.suppress(Exception):
            await unit.session.invalidate()
