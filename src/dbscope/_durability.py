"""Durability you can see: does a commit on the primary wait for a synchronous standby?

A commit that waits only for the primary's own disk is lost when a failover promotes a standby
that had not received it yet, though the application already answered 2xx for it (measured
on a Patroni cluster: 298 acknowledged writes lost in one crash without ``synchronous_mode``,
none with it). What the primary says of its standbys is read at ``connect()``, on the
connection that proves the server answers, and again in the background after the pool lost
connections (a failover may have moved the primary), until it has as many standbys as before
or two minutes have passed; never in a request's way.
``db.stats().durability`` shows the latest :class:`Durability`.

One warning per Database, when the server has standbys but its commits wait for none:
"acknowledged writes can be lost if this server fails". A single server without standbys (a
development database, or one whose disk is all there is) gets no warning: no failover can
promote a standby there, and a warning on every laptop would teach people to ignore it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from dbscope._dialects import Standbys, backend

logger = logging.getLogger("dbscope")

# synchronous   a commit waits for the standbys of synchronous_standby_names
# asynchronous  standbys are connected (or named), but a commit waits for none of them
# single        no standby is connected or named: the primary's disk is all there is
# unknown       standbys are named, but this user may not see their states (pg_monitor)
DurabilityState = Literal["synchronous", "asynchronous", "single", "unknown"]
# Commit levels that wait for no standby, whatever synchronous_standby_names says.
LOCAL_LEVELS: Final = ("off", "local")
WARNING: Final = (
    "%s: commits wait for no standby (%s connected, synchronous_standby_names = %r, "
    "synchronous_commit = %s): acknowledged writes can be lost if this server fails. Turn on "
    "synchronous replication (Patroni's synchronous_mode), or accept the loss; see "
    "docs/failover.md."
)
# After the pool lost connections: how long to wait before reading again (a failover takes
# seconds), how often to try while no primary answers, and for how long at most; and the
# least time between two readings (cancelled requests invalidate connections too).
REREAD_DELAY: Final = 1.0
REREAD_AFTER: Final = 10.0
REREAD_EVERY: Final = 2.0
REREAD_FOR: Final = 120.0
# The engine options a reading's own connection is opened with, as the app's are.
CONNECT_OPTIONS: Final = ("connect_args", "async_creator")


@dataclass(frozen=True)
class Durability:
    """Whether a commit on the primary waits for a synchronous standby, at the last reading.

    Attributes:
        state: ``"synchronous"`` (commits wait for the standbys that
            ``synchronous_standby_names`` names), ``"asynchronous"`` (standbys connected or
            named, but commits wait for none: acknowledged writes can be lost in a
            failover), ``"single"`` (no standby) or ``"unknown"`` (the user may not see the
            standbys' states: grant it ``pg_monitor``).
        standbys: standbys connected to the primary.
        in_sync: those a commit waits for now; None when the user may not see them.
        setting: the server's ``synchronous_standby_names``.
        commit: the server's ``synchronous_commit`` (a unit may ask for another level).
    """

    state: DurabilityState
    standbys: int
    in_sync: int | None
    setting: str
    commit: str

    @classmethod
    def of(cls, standbys: Standbys) -> Durability:
        """The durability a primary's answer about its standbys amounts to."""
        named = bool(standbys.setting.strip())
        state: DurabilityState
        if named and standbys.commit not in LOCAL_LEVELS:
            state = "unknown" if standbys.in_sync is None else "synchronous"
        elif named or standbys.connected:
            state = "asynchronous"
        else:
            state = "single"
        return cls(state, standbys.connected, standbys.in_sync, standbys.setting, standbys.commit)

    @property
    def commits_wait(self) -> bool:
        """Whether a commit waits for a standby that is connected in sync now."""
        return self.state == "synchronous" and bool(self.in_sync)

    def describe(self) -> str:
        """One line for people: what a commit waits for, and what follows."""
        listed = f"synchronous_standby_names = {self.setting!r}"
        if not self.setting.strip():
            connected = f" ({self.standbys} connected, asynchronous)" if self.standbys else ""
            return (
                f"none{connected}: synchronous_standby_names is empty, so a commit waits for "
                "no standby and a failover can lose acknowledged writes"
            )
        if self.commit in LOCAL_LEVELS:
            return f"{listed}, but synchronous_commit = {self.commit}: commits do not wait for it"
        if self.in_sync is None:
            return f"{listed}; the standbys are not visible to this user (grant it pg_monitor)"
        if self.in_sync == 0:
            return f"{listed}, but none is connected in sync: commits wait until one is"
        return f"{self.in_sync} in sync ({listed}): a commit waits for it"


class DurabilityWatch:
    """The latest :class:`Durability` of one Database's primary, and its one warning.

    Args:
        label: how the warning names the Database (its repr, which masks the password).
    """

    def __init__(self, label: str) -> None:
        self.label = label
        self.reading: Durability | None = None
        self._warned = False
        self._engine: AsyncEngine | None = None
        self._options: Mapping[str, Any] = {}
        self._task: asyncio.Task[None] | None = None
        self._started = -REREAD_AFTER

    def update(self, standbys: Standbys | None, *, settled: bool = True) -> None:
        """Take a new answer of the primary (None: the question does not apply there).

        ``settled``: no failover is under way, so an asynchronous reading is warned of. One
        taken while a new primary settles is not: Patroni's synchronous_mode runs a promoted
        standby without a synchronous one for seconds, and the one warning went to that.
        """
        self.reading = None if standbys is None else Durability.of(standbys)
        if settled:
            self._warn_if_asynchronous()

    def _warn_if_asynchronous(self) -> None:
        reading = self.reading
        if reading is not None and reading.state == "asynchronous" and not self._warned:
            self._warned = True
            logger.warning(WARNING, self.label, reading.standbys, reading.setting, reading.commit)

    def watch(self, engine: AsyncEngine, options: Mapping[str, Any]) -> None:
        """Read again, in the background, after ``engine``'s pool loses a connection."""
        self._engine, self._options = engine, options
        event.listen(engine.sync_engine, "invalidate", self._lost)

    async def close(self) -> None:
        """Stop watching; a reading in flight is cancelled."""
        engine, self._engine = self._engine, None
        if engine is not None:
            event.remove(engine.sync_engine, "invalidate", self._lost)
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            if task.get_loop() is asyncio.get_running_loop():
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _lost(self, *args: Any) -> None:
        # One reading at a time, and few: a failover invalidates every connection at once.
        if self._engine is None or time.monotonic() - self._started < REREAD_AFTER:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to schedule on
            loop = asyncio.get_running_loop()
            self._started = time.monotonic()
            self._task = loop.create_task(self._read_again(self._engine.url))

    async def _read_again(self, url: Any) -> None:
        # A connection of its own, outside the pool's line: a request never waits for it.
        options = {name: self._options[name] for name in CONNECT_OPTIONS if name in self._options}
        # Autocommit: its statements never leave the server "idle in transaction" between
        # them, which a check for leaked connections would take for one (measured: 1 backend
        # of the app's application_name, caught between the reading's statements).
        reader = create_async_engine(
            url, poolclass=NullPool, isolation_level="AUTOCOMMIT", **options
        )
        rules = backend(url.get_backend_name())
        before = self.reading
        try:
            await asyncio.sleep(REREAD_DELAY)
            for _ in range(int(REREAD_FOR / REREAD_EVERY)):
                try:
                    async with asyncio.timeout(REREAD_EVERY), reader.connect() as connection:
                        self.update(await rules.standbys(connection), settled=False)
                    read = True
                except Exception:  # no primary yet, mid-failover: try again
                    read = False
                if read and not _fewer_standbys(self.reading, before):
                    break
                # A promoted standby has none of its own until the old primary rejoins as
                # one, seconds later: read until it has as many as before, or time is up.
                await asyncio.sleep(REREAD_EVERY)
            self._warn_if_asynchronous()  # what it settled at, or the last reading
        finally:
            await reader.dispose()


def _fewer_standbys(now: Durability | None, before: Durability | None) -> bool:
    """Whether ``now`` has fewer standbys, or fewer in sync, than ``before``."""
    if now is None or before is None:
        return False
    return now.standbys < before.standbys or (now.in_sync or 0) < (before.in_sync or 0)
