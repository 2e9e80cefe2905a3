"""A request cancelled in the middle of a query leaks nothing: a storm of cancellations.

Per PostgreSQL driver, 300 requests (``DBSCOPE_CANCELLATIONS``; docs/units-of-work.md's
figures are of 1000) are cancelled while PostgreSQL runs their ``pg_sleep``, by three causes,
a third each: a pure ASGI middleware that wraps the app in ``asyncio.wait_for``; one that
runs it in an ``anyio.move_on_after`` cancel scope; and clients that hang up on a streaming
response served by uvicorn (tests/apps/stream_app.py). After one
second of quiet the pool has nothing checked out, no connection was left to the garbage
collector (no warning, no pool log line), no backend of the app's ``application_name`` is
idle in a transaction, and there are at most ``pool_size + max_overflow`` of them, then and at
every moment of the storm (polled every 50 ms). Each cancelled query costs a reconnect, which
``db.stats().invalidated`` counts; the figures are printed (``pytest -s``).

The queries sleep longer than a request lives and than the quiet second: a query that is not
cancelled on the server outlives its request, and shows as a backend too many. Such backends
count against the server's ``max_connections``, which other tests and programs share: once the
app has twice its allowance, the storm stops early (the test has failed by then anyway).
"""

import asyncio
import contextlib
import gc
import logging
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbscope import Database
from tests.helpers import admin, app_with, client_for
from tests.server import running_server

APP = "stream_app:app"


def storm(total: int) -> dict[str, int]:
    """``total`` requests in thirds, one per cause (the first cause takes the remainder)."""
    third = total // 3
    return {"wait_for": total - 2 * third, "cancel_scope": third, "stream": third}


# Requests per driver: 300 in the suite, 100 per cause; no assertion needs more. The figures
# of docs/units-of-work.md are of 1000 (about 75 s):
#   DBSCOPE_CANCELLATIONS=1000 .venv/bin/pytest -s tests/reliability/test_cancellation.py
# A leak that shows once in many cancellations is likelier found in the larger storm: run it
# after changing what a cancellation goes through.
REQUESTS = storm(int(os.environ.get("DBSCOPE_CANCELLATIONS", "300")))
CONCURRENCY = 10
POOL_SIZE = 10
MAX_OVERFLOW = 5
QUERY_SECONDS = 2.0  # far longer than any request lives: every query is cut short
CANCEL_AFTER = 0.3
# A request whose reconnect is slow may be cut short before its query starts: on a quiet
# machine none is, but a busy one has stalls of several hundred milliseconds. Those
# cancellations must leak nothing either; the share only keeps the test from going vacuous.
MID_QUERY_SHARE = 0.5
ALLOWED_BACKENDS = POOL_SIZE + MAX_OVERFLOW
# During the storm, a backend whose connection was thrown away mid-query lives on until the
# server notices (client_connection_check_interval, 100 ms): the peak may pass the pool's
# size by those, never by more than this. After the quiet, ALLOWED_BACKENDS holds.
BREAKER = 2 * ALLOWED_BACKENDS
POLL = 0.05
QUIET = 1.0
LEAK_PHRASES = ("garbage collector", "non-checked-in")
RecordProperty = Callable[[str, object], None]


async def send_timeout(send: Send) -> None:
    """Answer 504, as a timeout middleware does when the app had not started its response."""
    await send({"type": "http.response.start", "status": 504, "headers": []})
    await send({"type": "http.response.body", "body": b"timed out"})


@dataclass
class TimeoutMiddleware:
    """Pure ASGI middleware: the app gets ``seconds``, then 504 unless it had started."""

    app: ASGIApp
    seconds: float

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        if await self.timed_out(self.app(scope, receive, tracking_send)) and not started:
            await send_timeout(send)

    async def timed_out(self, call: Awaitable[None]) -> bool:
        """Run ``call`` under this middleware's timeout; True if it was cut short."""
        raise NotImplementedError


class WaitForTimeout(TimeoutMiddleware):
    """The app runs under ``asyncio.wait_for``, whose cancellation is delivered once."""

    async def timed_out(self, call: Awaitable[None]) -> bool:
        """Run ``call`` under ``asyncio.wait_for``."""
        try:
            await asyncio.wait_for(call, self.seconds)
        except TimeoutError:
            return True
        return False


class CancelScopeTimeout(TimeoutMiddleware):
    """The app runs in ``anyio.move_on_after``, whose cancellation repeats (level cancellation)."""

    async def timed_out(self, call: Awaitable[None]) -> bool:
        """Run ``call`` in an anyio cancel scope."""
        with anyio.move_on_after(self.seconds) as cancel_scope:
            await call
        return cancel_scope.cancelled_caught


def build_app(db: Database, middleware: type[WaitForTimeout | CancelScopeTimeout]) -> FastAPI:
    """``/sleep`` begins its transaction, then sleeps in PostgreSQL far past the timeout.

    ``app.state.started`` and ``app.state.finished`` count the sleeps begun and completed.
    """

    async def sleep(session: AsyncSession) -> dict[str, str]:
        await session.execute(text("SELECT 1"))
        app.state.started += 1
        await session.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": QUERY_SECONDS})
        app.state.finished += 1
        return {"status": "slept"}

    app = app_with(db.session, {"GET /sleep": sleep})
    app.add_middleware(middleware, seconds=CANCEL_AFTER)
    app.state.started = 0
    app.state.finished = 0
    return app


def application_name() -> str:
    """A name of this test's own for the app's connections in ``pg_stat_activity``."""
    return f"dbscope-cancel-{uuid.uuid4().hex[:12]}"


async def backends(database_url: str, name: str) -> dict[str, int]:
    """How many backends ``application_name = name`` has, per state, seen from outside."""
    query = text(
        "SELECT coalesce(state, 'unknown'), count(*) FROM pg_stat_activity "
        "WHERE application_name = :name GROUP BY 1"
    )
    async with admin(database_url) as connection:
        rows = (await connection.execute(query, {"name": name})).all()
    return {str(state): int(count) for state, count in rows}


async def wait_until_gone(database_url: str, name: str) -> None:
    """Wait (at most QUERY_SECONDS + 2 s) until ``name`` has no backend left.

    Not a check: it keeps queries left running by this test from reaching the next one.
    """
    with anyio.move_on_after(QUERY_SECONDS + 2):
        while True:
            if not await backends(database_url, name):
                return
            await asyncio.sleep(POLL)


@dataclass
class Watch:
    """What the watcher saw of the app's backends: the peak, and whether it passed BREAKER."""

    peak: int = 0
    overflowing: asyncio.Event = field(default_factory=asyncio.Event)


@contextlib.asynccontextmanager
async def watch_backends(database_url: str, name: str) -> AsyncIterator[Watch]:
    """Count the backends of ``name`` every POLL seconds meanwhile, from a connection aside."""
    watch = Watch()
    query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")

    async def poll() -> None:
        async with admin(database_url) as connection:
            while True:
                count = int(await connection.scalar(query, {"name": name}) or 0)
                watch.peak = max(watch.peak, count)
                if count > BREAKER:
                    watch.overflowing.set()
                await asyncio.sleep(POLL)

    task = asyncio.create_task(poll())
    try:
        yield watch
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.contextmanager
def loop_errors() -> Iterator[list[str]]:
    """Collect what the event loop reports meanwhile (e.g. a future's unretrieved exception).

    Figures to print, not failures: asyncpg reports a future of a connection aborted while a
    cancel request was under way. The garbage is collected before the old handler returns,
    so that nothing of this test reaches the next one.
    """
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    seen: list[str] = []

    def keep(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        seen.append(repr(context.get("exception") or context.get("message")))

    loop.set_exception_handler(keep)
    try:
        yield seen
    finally:
        gc.collect()
        loop.set_exception_handler(previous)


async def run_bounded(count: int, request: Callable[[], Any], stop: asyncio.Event) -> list[Any]:
    """Run ``request()`` ``count`` times, CONCURRENCY at once, none once ``stop`` is set.

    The results in order; None for a request never sent.
    """
    limiter = asyncio.Semaphore(CONCURRENCY)

    async def one() -> Any:
        async with limiter:
            return None if stop.is_set() else await request()

    return await asyncio.gather(*(one() for _ in range(count)))


def leak_lines(messages: list[str]) -> list[str]:
    """The messages that tell of a connection left to the garbage collector."""
    return [message for message in messages if any(p in message for p in LEAK_PHRASES)]


def publish(
    cause: str, url: str, figures: dict[str, object], record_property: RecordProperty, *more: Any
) -> None:
    """Print one line of figures (``pytest -s``) and ``more``; record the leak counters."""
    listed = " ".join(f"{key}={value}" for key, value in figures.items())
    print(f"\n[{driver_of(url)}] {cause}: {listed}", *more)
    for key in ("invalidated", "checked_out", "peak_backends"):
        record_property(key, figures[key])


def assert_backends_clean(states: dict[str, int], peak: int) -> None:
    """No backend left idle in a transaction, at most ALLOWED_BACKENDS after the quiet, and
    never more than BREAKER during the storm."""
    assert "idle in transaction" not in states
    assert "idle in transaction (aborted)" not in states
    assert sum(states.values()) <= ALLOWED_BACKENDS
    assert peak <= BREAKER


def driver_of(url: str) -> str:
    """'asyncpg' or 'psycopg', from a ``postgresql+driver://`` URL."""
    return url.split("+", 1)[1].split(":", 1)[0]


@pytest.mark.parametrize(
    ("cause", "middleware"),
    [("wait_for", WaitForTimeout), ("cancel_scope", CancelScopeTimeout)],
)
async def test_requests_cancelled_mid_query_by_a_timeout_middleware_leak_nothing(
    postgres_url: str,
    cause: str,
    middleware: type[WaitForTimeout | CancelScopeTimeout],
    caplog: pytest.LogCaptureFixture,
    record_property: RecordProperty,
) -> None:
    """A third of the storm: every request cut short mid-query; the pool ends clean."""
    caplog.set_level(logging.WARNING, logger="sqlalchemy")
    caplog.set_level(logging.WARNING, logger="dbscope")
    name = application_name()
    count = REQUESTS[cause]
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": MAX_OVERFLOW}
    with warnings.catch_warnings(record=True) as caught, loop_errors() as reported:
        warnings.simplefilter("always")
        async with Database(postgres_url, application_name=name, **options) as db:
            app = build_app(db, middleware)
            async with client_for(app) as client, watch_backends(postgres_url, name) as watch:
                with anyio.fail_after(60):
                    sent = await run_bounded(count, lambda: client.get("/sleep"), watch.overflowing)
                await asyncio.sleep(QUIET)
            gc.collect()
            stats = db.stats()
            states = await backends(postgres_url, name)
    await wait_until_gone(postgres_url, name)
    responses = [response for response in sent if response is not None]
    statuses = sorted({response.status_code for response in responses})
    figures: dict[str, object] = {
        "sent": len(responses),
        "mid_query": f"{app.state.started - app.state.finished}/{len(responses)}",
        "statuses": statuses,
        "invalidated": stats.invalidated,
        "checked_out": stats.checked_out,
        "backends": sum(states.values()),
        "peak_backends": watch.peak,
        "loop_errors": len(reported),
    }
    publish(cause, postgres_url, figures, record_property, states, reported[:2])
    assert stats.checked_out == 0
    assert [str(warning.message) for warning in caught] == []
    messages = [record.getMessage() for record in caplog.records]
    assert leak_lines(messages) == []
    # A cancel is no broken connection: its unit's close says nothing (it logged a traceback
    # per request when a listener read an invalidated connection's info).
    assert [message for message in messages if "Closing the session failed" in message] == []
    assert_backends_clean(states, watch.peak)
    assert len(responses) == count, "the storm stopped early: too many backends"
    assert statuses == [504]
    assert stats.invalidated > 0
    assert app.state.finished == 0
    assert app.state.started >= count * MID_QUERY_SHARE


async def start_then_hang_up(client: httpx.AsyncClient) -> str:
    """Read ``/sleep``'s first chunk, give the server time to start its query, hang up.

    Returns the chunk, or the error that cut the stream short.
    """
    try:
        async with client.stream("GET", "/sleep") as response:
            async for line in response.aiter_lines():
                await asyncio.sleep(CANCEL_AFTER)
                return line
    except httpx.TransportError as error:
        return repr(error)
    return ""


def stream_app_env(database_url: str, name: str) -> dict[str, str]:
    """The environment of tests/apps/stream_app.py: its database, name, pool and sleep."""
    return {
        "DATABASE_URL": database_url,
        "APPLICATION_NAME": name,
        "POOL_SIZE": str(POOL_SIZE),
        "MAX_OVERFLOW": str(MAX_OVERFLOW),
        "STREAM_SLEEP": str(QUERY_SECONDS),
    }


@pytest.mark.server
async def test_clients_hanging_up_on_streams_mid_query_leak_nothing(
    postgres_url: str, record_property: RecordProperty
) -> None:
    """A third of the storm: clients leave streams while uvicorn's app sleeps in PostgreSQL."""
    name = application_name()
    count = REQUESTS["stream"]
    with running_server(APP, stream_app_env(postgres_url, name)) as base_url:
        limits = httpx.Limits(max_connections=CONCURRENCY + 1)
        async with (
            httpx.AsyncClient(base_url=base_url, timeout=10, limits=limits) as client,
            watch_backends(postgres_url, name) as watch,
        ):
            with anyio.fail_after(60):
                sent = await run_bounded(
                    count, lambda: start_then_hang_up(client), watch.overflowing
                )
            await asyncio.sleep(QUIET)
            stats: dict[str, Any] = (await client.get("/stats")).json()
        states = await backends(postgres_url, name)
    await wait_until_gone(postgres_url, name)
    pool, counters = stats["pool"], stats["counters"]
    lines = [line for line in sent if line is not None]
    figures: dict[str, object] = {
        "sent": len(lines),
        "mid_query": f"{counters['started'] - counters['finished']}/{len(lines)}",
        "errors": len(stats["errors"]),
        "invalidated": pool["invalidated"],
        "checked_out": pool["checked_out"],
        "backends": sum(states.values()),
        "peak_backends": watch.peak,
    }
    publish("stream", postgres_url, figures, record_property, states, stats["errors"][:2])
    assert pool["checked_out"] == 0
    assert stats["warnings"] == []
    assert leak_lines(stats["log"]) == []
    assert_backends_clean(states, watch.peak)
    assert len(lines) == count, "the storm stopped early: too many backends"
    assert stats["errors"] == []
    assert lines == ["started"] * count
    assert pool["invalidated"] > 0
    assert counters["finished"] == 0
    assert counters["started"] >= count * MID_QUERY_SHARE


@pytest.mark.parametrize("db_backend", ["psycopg"])
async def test_units_cancelled_while_connecting_leave_no_server_connection(
    database_url: str,
) -> None:
    """Units cancelled after ever more event-loop turns, many of them while their connection
    opens, with the garbage collector off: the server ends with no more connections than the
    pool keeps (before: one more per cancelled connect, until a collection). psycopg's alone:
    asyncpg's cancelled connect closes its socket itself (and reports "unexpected
    connection_lost() call" to the event loop, which this test's runner raises)."""
    name = f"dbscope-cancel-{uuid.uuid4().hex[:8]}"
    count = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
    db = Database(database_url, application_name=name, pool_size=2, max_overflow=0)
    collecting = gc.isenabled()
    gc.disable()
    try:
        async with db, admin(database_url) as watcher:
            for turns in range(0, 400, 2):
                unit = asyncio.create_task(_one_unit(db))
                for _ in range(turns):
                    await asyncio.sleep(0)
                unit.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await unit
            for _ in range(100):  # the closes of the cut connects may be under way
                left = await watcher.scalar(count, {"name": name})
                if left <= 2:
                    break
                await anyio.sleep(0.05)
    finally:
        if collecting:
            gc.enable()
    assert left <= 2


async def _one_unit(db: Database) -> None:
    async with db.transaction() as session:
        await session.execute(text("SELECT 1"))
