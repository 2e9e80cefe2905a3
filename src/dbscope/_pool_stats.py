"""The pool's numbers, as ``db.stats()`` shows them: one snapshot, and one per read replica."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Final, Literal

from dbscope._durability import Durability

REPLICA_FIELDS: Final = ("replicas", "fallbacks")
ReplicaState = Literal["starting", "ready", "lagging", "down", "promoted", "foreign"]


@dataclass(frozen=True)
class ReplicaStats:
    """One replica, as ``db.stats().replicas`` shows it.

    Attributes:
        name: the replica's pool name (its ``host:port/database``).
        state: ``"ready"`` (serving reads), ``"lagging"`` (more than ``replica_max_lag``
            behind), ``"down"`` (in back-off: unreachable, refusing the connection, silent,
            or a standby its Patroni member holds unfit), ``"promoted"`` (no longer in
            recovery: a primary now), ``"foreign"`` (another cluster's), or ``"starting"``.
        lag: bytes of log behind the primary at the last check; None if unknown (down,
            promoted, foreign, or the primary's position not read).
        served: read-only units it has served.
        reason: why it is not ready, if it is not.
        pool: its pool's numbers; None while it has no engine.
    """

    name: str
    state: ReplicaState
    lag: int | None
    served: int
    reason: str | None
    pool: PoolStats | None


@dataclass(frozen=True, repr=False)
class PoolStats:
    """A snapshot of the connection pool.

    Attributes:
        size: connections the pool keeps (``pool_size``).
        checked_out: connections in use by a unit of work right now.
        checked_in: idle connections waiting in the pool.
        overflow: connections open beyond ``pool_size`` (negative while the pool is filling).
        invalidated: connections thrown away since connect() because they died, failed a
            pre-ping, were interrupted mid-query (a cancelled request, say), or were opened
            before one found dead (SQLAlchemy replaces those at their next checkout); each
            costs a reconnect.
        pinged: connections pinged before use since connect(), because they had been idle
            for ``pool_pre_ping_after`` seconds or their driver saw the server hang up.
        waiting: requests waiting in line for a connection right now.
        timeouts: requests that waited ``pool_timeout`` for a connection and gave up, since
            connect().
        refused: requests refused at once since connect(), because ``pool_max_waiters``
            requests already waited.
        abandoned: requests not run when their turn in line came, since connect(), because
            their client had hung up while they waited (``dbscope.fastapi``; under uvicorn).
        held: requests of clients that asked again before the ``Retry-After`` of such a
            refusal had passed, held until it had and answered 503 without asking the pool
            (``dbscope.fastapi``), over the Database's life.
        rereads: read-only units whose first statement met a lost connection (the server
            ended it: a restart, a terminated backend, a failover) and ran again, once, on a
            fresh connection of the same engine, over the Database's life; a replica's
            read that ran again on the primary is counted in ``fallbacks`` instead.
        replicas: each read replica's numbers (:class:`ReplicaStats`); empty without.
        fallbacks: read-only units that ran on the primary instead of a replica, by why:
            ``no_replica_ready``, ``behind`` (none had replayed the unit's write token in
            ``replica_wait``), ``unreachable``, ``connection_lost``, ``pool_timeout``,
            ``isolation_level`` (REPEATABLE READ with a token, or SERIALIZABLE).
        durability: whether a commit on the primary waits for a synchronous standby
            (``durability.state``: ``synchronous``, ``asynchronous``, ``single`` or
            ``unknown``), as read at connect() and again after the pool lost connections;
            None where the question does not apply (SQLite, MariaDB/MySQL). The repr shows
            it only where there are standbys to speak of (not ``single``).
    """

    size: int
    checked_out: int
    checked_in: int
    overflow: int
    invalidated: int
    pinged: int = 0
    waiting: int = 0
    timeouts: int = 0
    refused: int = 0
    abandoned: int = 0
    held: int = 0
    rereads: int = 0
    replicas: tuple[ReplicaStats, ...] = ()
    fallbacks: tuple[tuple[str, int], ...] = ()
    durability: Durability | None = None

    def __repr__(self) -> str:
        # The replica fields only when there are replicas: most pools have none. Durability
        # only when there are standbys to speak of: not for a file, nor a single server.
        shown = [
            f"{field.name}={getattr(self, field.name)!r}"
            for field in dataclasses.fields(self)
            if field.name not in REPLICA_FIELDS or getattr(self, field.name)
            if field.name != "durability" or self._standbys_shown()
        ]
        return f"PoolStats({', '.join(shown)})"

    def _standbys_shown(self) -> bool:
        return self.durability is not None and self.durability.state != "single"
