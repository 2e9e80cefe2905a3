"""The cancel sweep's machinery, for tests/reliability/test_cancel_sweep*.py (a test module
never imports another).

A unit of work (reads, writes a row of its own tag, commits) runs uncancelled and its steps
are counted: each time the loop runs its task (:class:`Stepped`). Then for each n from 0 up
it runs again, takes n steps and is cancelled (a :data:`Cause`: ``task.cancel()``, or an
``asyncio.timeout()`` or anyio ``move_on_after()`` expiring around it), twice: with the
awaited work under way, and once its result is in but before the task resumes, where Python
3.11's ``asyncio.wait_for`` lost a cancel (:func:`reach`). Loop iterations are no measure (12
to 3,804 for one unit, most waiting for the server); steps are. After each point
(:func:`check_point`): nothing checked out, no transaction open on the server, a cancel never
swallowed, the next unit fine, the row as the unit's end says; over the whole sweep nothing
reported (:func:`nothing_reported`). Counts only, never how long anything took.

:func:`open_sweep` makes a test's :class:`Sweep` (the fixtures' body), :func:`run_sweep` runs
one over a unit.
"""

import asyncio
import contextlib
import dataclasses
import gc
import math
import sqlite3
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Generator, Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy import column, event, func, insert, select, table, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from dbscope import Database
from dbscope._dialects.write_lock import writer_of
from tests.helpers import Tables, admin

ROWS = table("cs_rows", column("tag"))
PROBE = "probe"  # the following unit's row, always rolled back
COUNTING_RUNS = 3  # uncancelled runs counted; the most steps any took
POLLS = 200  # looks at the server before a transaction left open fails the test
# Runs the unit that writes a tag; True once it completed.
Unit = Callable[[str], Coroutine[Any, Any, bool]]


async def write_row(session: AsyncSession, tag: str) -> dict[str, str]:
    """Read, then write the row ``tag``: the unit of every entry point."""
    await session.execute(select(func.count()).select_from(ROWS))
    await session.execute(insert(ROWS).values(tag=tag))
    return {"tag": tag}


@dataclass
class TaskCancel:
    """``task.cancel()``: the task ends cancelled."""

    fired: bool = False

    async def run(self, unit: Unit, tag: str) -> bool:
        return await unit(tag)

    def fire(self, task: asyncio.Task[bool]) -> None:
        self.fired = task.cancel()

    def delivered(self) -> bool:
        return self.fired


@dataclass
class AsyncioTimeout:
    """``asyncio.timeout()`` expiring: TimeoutError out of the block, which returns False."""

    timeout: asyncio.Timeout | None = None
    expired: bool = False

    async def run(self, unit: Unit, tag: str) -> bool:
        try:
            async with asyncio.timeout(None) as self.timeout:
                if self.expired:  # fired before the task began: expires at its first await
                    self.timeout.reschedule(asyncio.get_running_loop().time())
                return await unit(tag)
        except TimeoutError:
            return False

    def fire(self, task: asyncio.Task[bool]) -> None:
        self.expired = True
        if self.timeout is not None:
            self.timeout.reschedule(asyncio.get_running_loop().time())

    def delivered(self) -> bool:
        return self.timeout is not None and self.timeout.expired()


@dataclass
class AnyioTimeout:
    """anyio's ``move_on_after()`` expiring (``fail_after()`` is the same cancel scope)."""

    scope: anyio.CancelScope = field(default_factory=lambda: anyio.move_on_after(math.inf))

    async def run(self, unit: Unit, tag: str) -> bool:
        with self.scope:
            return await unit(tag)
        return False

    def fire(self, task: asyncio.Task[bool]) -> None:
        self.scope.deadline = -math.inf

    def delivered(self) -> bool:
        # anyio cancels again at each await while the block runs, and never a task whose
        # awaited result is in: a unit whose last await had returned completes, rightly.
        return False


# Each runs the unit (True if it completed) and cancels it when fired; delivered() tells
# whether a cancel reached the task, which must then not complete.
Cause = TaskCancel | AsyncioTimeout | AnyioTimeout
CAUSES: dict[str, Callable[[], Cause]] = {
    "cancel": TaskCancel,
    "asyncio_timeout": AsyncioTimeout,
    "anyio_move_on_after": AnyioTimeout,
}


@dataclass
class Sweep:
    """A test's Database (one connection), its backend, a watcher of the server."""

    db: Database
    backend: str
    database_url: str
    watcher: AsyncConnection | None  # None on SQLite: a file has no sessions to list
    name: str
    commits: int = 0

    def count_commit(self, *_: Any) -> None:  # the engine's event, before each COMMIT
        self.commits += 1


@contextlib.asynccontextmanager
async def open_sweep(
    database_url: str, db_backend: str, tables: Tables, **settings: Any
) -> AsyncIterator[Sweep]:
    """A Database of one connection on the test's ``cs_rows``, its commits counted;
    ``settings`` over the sweep's own (a ping at checkout, say)."""
    await tables.create("cs_rows", "tag VARCHAR(64) NOT NULL")
    name = f"dbscope-sweep-{uuid.uuid4().hex[:12]}"
    # One connection: the unit after a cancelled one gets the connection it left. No ping
    # before use: a ping would add steps to some units and not to others.
    options: dict[str, Any] = {"pool_size": 1, "max_overflow": 0, "pool_pre_ping_after": 3600}
    if db_backend in ("asyncpg", "psycopg"):
        options["application_name"] = name
    async with contextlib.AsyncExitStack() as stack:
        db = await stack.enter_async_context(Database(database_url, **{**options, **settings}))
        watcher = None
        if db_backend != "sqlite":
            watcher = await stack.enter_async_context(admin(database_url))
        state = Sweep(db, db_backend, database_url, watcher, name)
        event.listen(db.engine.sync_engine, "commit", state.count_commit)
        yield state


# The test's sessions with a transaction open, and all: on PostgreSQL by database and
# application_name; MariaDB's have no name, but the database is the test's own.
PG_SESSIONS = text(
    "SELECT count(*) FILTER (WHERE state IN ('idle in transaction',"
    " 'idle in transaction (aborted)')), count(*) FROM pg_stat_activity"
    " WHERE datname = current_database() AND application_name = :name"
)
MARIADB_SESSIONS = text(
    "SELECT (SELECT count(*) FROM information_schema.innodb_trx t"
    " JOIN information_schema.processlist p ON p.id = t.trx_mysql_thread_id"
    " WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()),"
    " (SELECT count(*) FROM information_schema.processlist"
    " WHERE db = DATABASE() AND id <> CONNECTION_ID())"
)


async def server_sessions(sweep: Sweep) -> tuple[int, int]:
    """The test's sessions on the server with a transaction open, and all of them."""
    if sweep.watcher is None:
        return int(sqlite_write_locked(make_url(sweep.database_url).database or "")), 0
    query = PG_SESSIONS if sweep.backend in ("asyncpg", "psycopg") else MARIADB_SESSIONS
    row = (await sweep.watcher.execute(query, {"name": sweep.name})).one()
    return int(row[0]), int(row[1])


def turn_kept(sweep: Sweep) -> bool:
    """Whether a unit of the sweep still has its turn in the SQLite file's line of writers."""
    path = Path(make_url(sweep.database_url).database or "").resolve()
    return writer_of(path).turn_taken()


def sqlite_write_locked(path: str) -> bool:
    """Whether a write transaction is left open on the file (WAL: readers take no lock)."""
    with contextlib.closing(sqlite3.connect(path, timeout=0, isolation_level=None)) as file:
        try:
            file.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return True
        file.execute("ROLLBACK")
    return False


async def assert_nothing_open(sweep: Sweep, where: str) -> None:
    """No transaction of the test's left open on the server, and one session at most.
    Polled: one whose connection was thrown away shows until the server reads the hang-up."""
    for _ in range(POLLS):
        open_transactions, sessions = await server_sessions(sweep)
        if open_transactions == 0 and sessions <= 1:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{where}: {open_transactions} transactions left open, {sessions} sessions")


class RolledBack(Exception):
    """Ends the following unit, so that it rolls back."""


async def following_unit(db: Database, tag: str) -> tuple[int, int]:
    """Run a unit that reads and writes, then rolls back: the rows of ``tag`` and of PROBE it
    read. A PROBE row means an earlier one's rollback did not hold (autocommit left on)."""
    counted = (
        select(ROWS.c.tag, func.count()).where(ROWS.c.tag.in_([tag, PROBE])).group_by(ROWS.c.tag)
    )
    found: dict[str, int] = {}
    with contextlib.suppress(RolledBack):
        async with db.transaction() as session:
            found = {str(key): int(n) for key, n in (await session.execute(counted)).all()}
            await session.execute(insert(ROWS).values(tag=PROBE))
            raise RolledBack
    return found.get(tag, 0), found.get(PROBE, 0)


class Stepped(Coroutine[Any, Any, bool]):
    """A coroutine that counts the times its task runs it: its steps."""

    def __init__(self, inner: Coroutine[Any, Any, bool]) -> None:
        self.inner = inner
        self.steps = 0

    def send(self, value: Any) -> Any:
        self.steps += 1
        return self.inner.send(value)

    def throw(self, *error: Any) -> Any:
        self.steps += 1
        return self.inner.throw(*error)

    def close(self) -> None:
        self.inner.close()

    def __await__(self) -> Generator[Any, None, bool]:
        return self.inner.__await__()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # cr_frame, cr_running...: anyio asks for them


@dataclass(frozen=True)
class Point:
    """A cancel point (``steps``, ``late``) and what happened: fired (the unit still ran),
    delivered, the unit completed, a COMMIT sent."""

    steps: int
    late: bool
    fired: bool = False
    delivered: bool = False
    completed: bool = False
    committed: bool = False


NEVER = Point(10**9, late=False)  # a cancel point no unit reaches: the unit uncancelled


async def reach(task: asyncio.Task[bool], stepped: Stepped, point: Point) -> None:
    """Let the loop run until ``task`` has taken ``point.steps`` steps, and if ``late`` until
    the result it then awaits is in: where asyncio.wait_for lost a cancel."""
    # One loop iteration per sleep(0): an Event would let many pass unseen.
    while not task.done() and stepped.steps < point.steps:  # noqa: ASYNC110
        await asyncio.sleep(0)
    while point.late and not task.done() and stepped.steps == point.steps:
        # What the task awaits: asyncio's own attribute, in its C and Python tasks alike.
        waiting_for = task._fut_waiter  # type: ignore[attr-defined]
        if waiting_for is None or waiting_for.done():
            return
        await asyncio.sleep(0)


async def cancel_at(sweep: Sweep, unit: Unit, cause: Cause, point: Point, tag: str) -> Point:
    """Start the unit as a task, let it reach ``point``, fire ``cause``, wait for its end."""
    sweep.commits = 0
    stepped = Stepped(cause.run(unit, tag))
    task = asyncio.create_task(stepped)
    await reach(task, stepped, point)
    fired = not task.done()
    if fired:
        cause.fire(task)
    await asyncio.wait({task})
    cancelled = task.cancelled()
    assert not cancelled or isinstance(cause, TaskCancel), f"{tag}: {cause} ended cancelled"
    completed = not cancelled and task.result()  # raises what the unit raised, if anything
    ended = {"delivered": cause.delivered(), "completed": completed, "fired": fired}
    steps = point.steps if fired else stepped.steps  # uncancelled: the steps it took
    return dataclasses.replace(point, steps=steps, committed=sweep.commits > 0, **ended)


async def check_point(sweep: Sweep, point: Point, tag: str) -> None:
    """Nothing left behind by the unit cancelled at ``point``; its row as its end says."""
    where = f"cancelled at {point}"
    stats = sweep.db.stats()
    if stats.checked_out:
        pytest.fail(f"{where}: a connection is still checked out: {stats}; {await later(sweep)}")
    assert not (point.delivered and point.completed), f"{where}: the cancel was swallowed"
    if sweep.backend == "sqlite":  # the next writer would wait out the busy timeout in line
        assert not turn_kept(sweep), f"{where}: the unit's turn to write was not passed on"
    stored, probes = await following_unit(sweep.db, tag)
    assert probes == 0, f"{where}: an earlier following unit's rollback did not hold"
    if point.completed:
        assert stored == 1, f"{where}: the unit completed, its row is missing"
    elif not point.committed:
        assert stored == 0, f"{where}: no COMMIT was sent, yet the row is there"
    else:
        assert stored <= 1, f"{where}: the row is there {stored} times"
    await assert_nothing_open(sweep, where)


async def later(sweep: Sweep) -> str:
    """What became of a connection still checked out after its unit ended."""
    for turn in range(POLLS):  # a task of the unit's may still be ending it
        if not sweep.db.stats().checked_out:
            return f"back {turn} loop turns later"
        await asyncio.sleep(0)
    gc.collect()  # a connection left to the garbage collector comes back here
    await asyncio.sleep(0)
    lost = sweep.db.stats().checked_out
    return f"{'not back' if lost else 'back'} after {POLLS} loop turns and a garbage collection"


@contextlib.contextmanager
def nothing_reported() -> Iterator[None]:
    """Fail if, meanwhile, a warning was raised (a connection left to the garbage collector)
    or the event loop reported an error (a task or future whose exception nobody read)."""
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    reported: list[str] = []
    loop.set_exception_handler(lambda _, context: reported.append(repr(context)))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
            gc.collect()
    finally:
        loop.set_exception_handler(previous)
    # Messages of their own: pytest rewrites the asserts of test modules, not of this one.
    warned = [str(warning.message) for warning in caught]
    assert warned == [], f"warnings raised: {warned}"
    assert reported == [], f"the event loop reported: {reported}"


# A test's own check after each point, beside check_point's (the session's state put back).
Check = Callable[[Point], Awaitable[None]]


async def run_sweep(
    sweep: Sweep,
    units: AbstractAsyncContextManager[Unit],
    label: str,
    cause: str,
    check: Check | None = None,
) -> list[Point]:
    """Count the unit ``units`` gives, then cancel it by ``cause`` at each point and check
    it (and ``check`` it); ``label`` names the unit in the printed figures."""
    points: list[Point] = []
    with nothing_reported():
        async with units as unit:
            await unit("warm-up")  # prepared statements, the app's routes: made once
            counted = [
                (await cancel_at(sweep, unit, TaskCancel(), NEVER, f"{i}")).steps
                for i in range(COUNTING_RUNS)
            ]
            # Up the steps until the unit ends before a cancel, early and late: a unit on a new
            # connection (after an invalidated one) prepares its statements again, a step more.
            for steps in range(2 * max(counted) + 5):
                fired = False
                for late in (False, True):
                    tag = f"{cause}-{steps}-{'late' if late else 'early'}"
                    done = await cancel_at(sweep, unit, CAUSES[cause](), Point(steps, late), tag)
                    await check_point(sweep, done, tag)
                    if check is not None:
                        await check(done)
                    points.append(done)
                    fired = fired or done.fired
                if not fired:
                    break
        last = await following_unit(sweep.db, "")
        assert last == (0, 0), f"the last probe was not rolled back: {last}"
    completed = sum(point.completed for point in points)
    print(
        f"\n[{sweep.backend} {label} {cause}] steps {counted}, points {len(points)}, "
        f"completed {completed}"
    )
    # Neither side of the sweep was empty: it cut units short, and let some complete.
    assert completed, f"no unit completed: {points}"
    cut = any(point.fired and not point.completed for point in points)
    assert cut, f"no unit was cut short: {points}"
    return points
