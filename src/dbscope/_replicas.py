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

Health is checked in the background (``_replica_health.py``). A unit whose replica cannot
give it a connection runs on the primary instead, and so does one whose replica connection is
lost during its first statement (``UnitState.reroute``): no rows were returned yet, so nothing
is read twice. Every read that falls back to the primary is counted, with why.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any, Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

from dbscope._connection_ends import drop_in_reset, skips_rollback_of_dropped
from dbscope._dialects import Backend, backend, only_read
from dbscope._engine import unit_bind
from dbscope._errors import connection_gone, translate
from dbscope._exceptions import DatabaseUnavailableError
from dbscope._lifecycle import Lifecycle
from dbscope._pool import PoolCounters, QueuedPool
from dbscope._pool_stats import ReplicaStats
from dbscope._replica_health import Replica, ReplicaChecks, why
from dbscope._session import WRITER, UnitState
from dbscope._settings import DatabaseSettings
from dbscope._unavailable import Limits
from dbscope._unit import MakeUnit, UnitOfWork
from dbscope._unit_options import UnitOptions
from dbscope._urls import default_pool_name
from dbscope._write_tokens import UNKNOWN_POSITION, WriteToken, current_jar

logger = logging.getLogger("dbscope")

# On a pooled connection's info: its transaction committed (set just before the COMMIT).
COMMITTED: Final = "dbscope.committed"
# Said of a position not read because the server ended the connection after its commit.
LOST_AT_POSITION: Final = (
    ": the connection was lost (server restart, terminated backend or network cut) after the commit"
)
# How often a read that waits for a replica asks it again.
CATCH_UP_STEP: Final = 0.002
# Isolation levels whose snapshot is taken at the unit's first statement, the replay check:
# a replica could not promise a snapshot with the token's writes, so such reads carrying a
# token run on the primary.
SNAPSHOT_LEVELS: Final = frozenset({"REPEATABLE READ", "SERIALIZABLE"})
# Levels a hot standby refuses ("cannot use serializable mode in a hot standby"): such units
# always run on the primary.
PRIMARY_LEVELS: Final = frozenset({"SERIALIZABLE"})


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
        self.url = settings.url
        self.rules: Backend = backend(settings.url.get_backend_name())
        self.wait = settings.replica_wait
        self.fallbacks: Counter[str] = Counter()
        patroni = settings.replica_patroni_urls or (None,) * len(settings.database_replica_urls)
        self.replicas = [
            self._replica(settings, options, url, name, health)
            for url, health in zip(settings.database_replica_urls, patroni, strict=True)
        ]
        self._turn = 0
        self.checks = ReplicaChecks(
            primary,
            self.replicas,
            self.rules,
            name,
            settings.replica_check_interval,
            int(settings.replica_max_lag),
        )
        primary.observe(self)

    def _replica(
        self,
        settings: DatabaseSettings,
        options: Mapping[str, Any],
        url: Any,
        primary_name: str,
        patroni: str | None,
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
        lifecycle = Lifecycle(replica_settings, replica_options, label, sessions)
        return Replica(name, lifecycle, patroni)

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
        if (
            token is not None
            and token.position > self.checks.reached  # else known written, nothing to ask
            and not await self._written(token)
        ):
            token = None  # further than the primary's log: no write to wait for (forged)
        replica = self._choose(token)
        if replica is None:
            return self._on_primary(make, "no_replica_ready")
        unit = make(replica.lifecycle.session_maker())
        wanted = 0 if token is None else token.position
        # Checked on the unit's own connection when the check's reading may be of another
        # server of the same URL, or when it is behind what the unit must see.
        if replica.replayed < wanted or (wanted and replica.several_servers):
            try:
                connection = await unit.session.connection()  # checks out, and begins
                if not await self._catch_up(replica, connection, wanted):
                    await _discard(unit)
                    return self._on_primary(make, "behind")
            except Exception as error:
                await _discard(unit)
                if self._reroute(replica, error) is None:
                    raise
                return make(None)
            except BaseException:
                # Cancelled while checking out or waiting for the replica: nobody else holds
                # the unit to end it (measured: psycopg's connection stayed checked out until
                # the garbage collector dropped it).
                await _discard(unit)
                raise
        # Else the replica is known to have what the unit must see: its first statement checks
        # a connection out, one round trip less, and reroutes if it cannot.
        replica.served += 1
        unit.state.reroute = functools.partial(self._reroute_unit, replica, options)
        return unit

    def _reroute(self, replica: Replica, error: Exception) -> str | None:
        """Whether a read that ``error`` stopped on ``replica`` before anything was returned
        runs on the primary: the reason it does (counted), or None when the error is not an
        outage of the replica (the read's own, which propagates)."""
        outage = translate(error, Limits(replica.lifecycle.settings.url))
        if not isinstance(outage, DatabaseUnavailableError) or self.primary.state != "connected":
            return None
        if outage.cause != "pool_timeout":  # a busy replica is no sick one
            self.checks.failed(replica, why(error, replica))
        self.fallbacks[outage.cause] += 1
        return outage.cause

    def _reroute_unit(
        self, replica: Replica, options: UnitOptions, error: Exception
    ) -> Engine | None:
        """Where a unit goes whose first statement on ``replica`` met ``error``: the
        primary's engine (the unit's view of it) for an outage of the replica, else None."""
        if self._reroute(replica, error) is None:
            return None
        replica.served -= 1
        factory = self.primary.session_maker()
        bind = unit_bind(factory, self.rules, True, options.isolation_level).get("bind")
        return (bind or self.primary.engine).sync_engine

    async def _written(self, token: WriteToken) -> bool:
        """Whether the primary's log has reached ``token``'s position, further than the app
        knows it: asked of the primary (a token of another process's later write; one cheap
        query) when one of its connections is free now; when none is, taken for reached.

        A token further than the primary's log now names no write: a client made it up. Such
        a read waiting for a replica would hold a replica connection and ask it again and
        again for ``replica_wait``, then read the primary; it takes any ready replica instead.
        """
        pool = self.primary.engine.pool
        if isinstance(pool, QueuedPool) and not pool.serves_at_once():
            # Not worth a wait in the primary's line (pool_timeout, where the caller may
            # hold its only connection): the token as it says, as before any check.
            return True
        try:
            async with self.primary.engine.connect() as connection:
                now = await self.rules.log_position(connection)
        except Exception:  # the primary busy or out of reach: the token as it says
            return True
        self.checks.reached = max(self.checks.reached, now)
        return token.position <= now

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

    async def _catch_up(self, replica: Replica, connection: AsyncConnection, position: int) -> bool:
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
        # Only here, where _capture may drop a connection: elsewhere every checkin's
        # rollback stays SQLAlchemy's own, with no wrapper to pass through.
        skips_rollback_of_dropped(engine)

    def engine_stopped(self, engine: AsyncEngine, counters: PoolCounters) -> None:
        """Stop reading positions on ``engine``."""
        event.remove(engine.sync_engine, "commit", _mark_commit)
        event.remove(engine.sync_engine, "reset", self._capture)

    def _capture(
        self, dbapi_connection: Any, record: ConnectionPoolEntry, reset: PoolResetState
    ) -> None:
        # The connection is back from a unit, its transaction over: read the position now,
        # after the COMMIT (one taken inside the transaction would come before its own commit
        # record), and before anyone else uses the connection. Kept at once, in the unit's
        # context (the checkin is the unit's): a read after a commit() mid-unit must see it.
        state = record.info.pop(WRITER, None)
        if not (record.info.pop(COMMITTED, False) and isinstance(state, UnitState)):
            return
        jar = current_jar(create=True)
        assert jar is not None
        # Read after this mark, the position replaces an unknown one kept before it.
        read_since = jar.mark()
        try:
            if reset.terminate_only or not reset.asyncio_safe:
                # Collected, not returned: nothing may be asked of it now.
                raise RuntimeError("the connection was not returned by its unit")
            position = self.rules.write_position(dbapi_connection)
        except Exception as error:
            # A connection the server ended after the COMMIT (terminated, restarted): no
            # fault to show a traceback of, whatever words the driver has for it.
            lost = connection_gone(error, self.url, dbapi_connection.driver_connection)
            logger.warning(
                "Could not read the primary's log position after a commit%s; the reads that "
                "follow it go to the primary, until a later write's is read.",
                LOST_AT_POSITION if lost else "",
                exc_info=not lost,
            )
            if lost:  # and not rolled back by the pool next, which would fail on it too
                drop_in_reset(dbapi_connection, record, error)
            position = UNKNOWN_POSITION
        jar.add(WriteToken(self.cluster, position), read_since)
        if position != UNKNOWN_POSITION:
            self.checks.reached = max(self.checks.reached, position)

    # -- health ------------------------------------------------------------------------------

    @property
    def cluster(self) -> str:
        """The primary's cluster, as its last reading gave it ('' before connect())."""
        return self.checks.cluster

    async def connect(self) -> None:
        """Learn the primary's cluster, check every replica once, then watch them."""
        await self.checks.connect()

    async def dispose(self) -> None:
        """Stop watching, and close every replica's pool; the next connect() starts anew."""
        await self.checks.dispose()

    def stats(self) -> tuple[ReplicaStats, ...]:
        """Each replica's numbers now."""
        return tuple(replica.stats() for replica in self.replicas)


def _mark_commit(connection: Connection) -> None:
    # A unit that only read (its transaction never began on the server) wrote nothing that a
    # later read must wait for: reading the position after it would only slow those reads.
    if not only_read(connection):
        connection.info[COMMITTED] = True


async def _discard(unit: UnitOfWork) -> None:
    """End a unit that was not handed out: its connection back, or dropped if broken."""
    unit.state.ended = True
    try:
        # AsyncSession's own exit closes to completion, even if the task is cancelled again.
        await unit.session.__aexit__(None, None, None)
    except Exception:
        with contextlib.suppress(Exception):
            await unit.session.invalidate()
