"""Where a request's time goes: dbscope's per-request path against the layers beneath it.

The variant apps are driven in-process through ASGI, one request at a time, without HTTP, so
that what is measured is the app and its database layer alone:

- CPU microseconds and wall microseconds per request, for each variant on ``/db``, on
  ``/nodb``, and on ``/session-only`` (a request that takes a session and runs no SQL);
- the blog pattern with SQLAlchemy's ``pool_pre_ping`` switched off, to price its ping
  (dbscope pings only connections that have been idle, which a busy loop never has);
- dbscope's fast path for hot reads (``async with db.lease()`` and ``Depends(db.leased)``)
  and the candidates it was chosen from (a Core statement without its transaction, the driver
  connection taken from SQLAlchemy's pool) next to the raw asyncpg pool;
- round trips per request, counted with SQLAlchemy's engine and pool events (and dbscope's
  pings with ``db.stats()``);
- function calls per request (cProfile), dbscope's own functions among them, on ``/db`` and
  on ``/queries?q=20`` (twenty ORM reads in one unit, where per-statement costs show);
- a pyinstrument call tree of dbscope's ``/db``.

Results go to ``profile.json`` and ``profile-*.txt`` in the results directory.
"""

from __future__ import annotations

import contextlib
import cProfile
import importlib
import io
import json
import os
import pstats
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any, Final

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from benchmarks import loadgen
from benchmarks.variants.common import NODB_BODY, RAW_SELECT, core_one, random_id, raw_one

REQUESTS: Final = 1000
PROFILED_REQUESTS: Final = 1000
REPEATS: Final = 5
CORE: Final = 1
QUERIES: Final = "/queries?q=20"
VARIANTS: Final = ("raw_asyncpg", "sa_core", "blog", "dbscope_session", "dbscope_fast")

Call = Callable[[], Awaitable[int]]


def asgi_get(app: FastAPI, target: str, client: tuple[str, int] = ("127.0.0.1", 50000)) -> Call:
    """A function that sends ``GET target`` straight to ``app`` from ``client`` (its address
    and port: the connection it comes on) and returns the status."""
    path, _, query = target.partition("?")
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1")],
        "client": client,
        "server": ("127.0.0.1", 8000),
    }
    request = {"type": "http.request", "body": b"", "more_body": False}

    async def receive() -> dict[str, Any]:
        return request

    async def call() -> int:
        status = 0

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        await app(dict(scope, state={}), receive, send)
        return status

    return call


@dataclass(frozen=True)
class Measurement:
    """One thing to time: a request, and the module whose pre-ping is off meanwhile."""

    call: Call
    without_ping: ModuleType | None = None


async def _timed(call: Call, count: int) -> tuple[float, float]:
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    for _ in range(count):
        status = await call()
        if status != 200:
            message = f"the profiled request answered {status}"
            raise RuntimeError(message)
    return time.process_time() - cpu_start, time.perf_counter() - wall_start


async def per_request(
    measurements: dict[str, Measurement], count: int = REQUESTS
) -> dict[str, dict[str, float]]:
    """CPU and wall microseconds per request of each measurement.

    Every repeat times each measurement in turn, so that a busy moment of the machine falls
    on all of them alike; the figure is the median over the repeats.
    """
    cpu: dict[str, list[float]] = {name: [] for name in measurements}
    wall: dict[str, list[float]] = {name: [] for name in measurements}
    for repeat in range(REPEATS + 1):  # the first round only warms up
        for name, measurement in measurements.items():
            with _pre_ping_off(measurement.without_ping):
                spent_cpu, spent_wall = await _timed(measurement.call, count)
            if repeat:
                cpu[name].append(spent_cpu / count * 1e6)
                wall[name].append(spent_wall / count * 1e6)
    return {
        name: {
            "cpu_us": round(statistics.median(cpu[name]), 1),
            "wall_us": round(statistics.median(wall[name]), 1),
        }
        for name in measurements
    }


def _add_session_only(module: ModuleType) -> None:
    """Give a variant ``GET /session-only``: takes the request's session, runs no SQL."""

    async def session_only(session: Any) -> JSONResponse:
        return JSONResponse(NODB_BODY)

    # The variant's own Annotated alias, set after the fact: this module's annotations are
    # strings (``from __future__``) that FastAPI could not resolve to a local name.
    session_only.__annotations__["session"] = module.Session
    module.app.add_api_route("/session-only", session_only, methods=["GET"])


def _engine(module: ModuleType) -> AsyncEngine | None:
    engine: AsyncEngine | None = None
    if hasattr(module, "db"):
        engine = module.db.engine
    elif hasattr(module, "sessionmanager"):
        engine = module.sessionmanager.engine
    elif getattr(module, "engines", None):
        engine = module.engines[0]
    return engine


@contextlib.contextmanager
def counted_round_trips(module: ModuleType, engine: AsyncEngine) -> Any:
    """Count, while the block runs, what each request sends to the server."""
    counts: Counter[str] = Counter()
    sync_engine = engine.sync_engine
    # SQLAlchemy's pre-ping pings at every checkout; dbscope's check counts its own pings.
    db = getattr(module, "db", None)
    pre_ping = db is None and bool(getattr(sync_engine.pool, "_pre_ping", False))
    pinged_before = db.stats().pinged if db is not None else 0

    def checkout(*_: Any) -> None:
        if pre_ping:
            counts["ping"] += 1

    # A BEGIN and the end of its transaction are counted at the end, and only if the driver
    # (asyncpg) began one: dbscope's units that only read have none (deferred_begin.py).
    def ended(how: str) -> Callable[[Connection], None]:
        def count(connection: Connection) -> None:
            driver_connection = connection.connection.driver_connection
            if driver_connection is not None and driver_connection.is_in_transaction():
                counts["BEGIN"] += 1
                counts[how] += 1

        return count

    def statement(*_: Any) -> None:
        counts["statements"] += 1

    listeners = [
        (sync_engine.pool, "checkout", checkout),
        (sync_engine, "before_cursor_execute", statement),
        (sync_engine, "commit", ended("COMMIT")),
        (sync_engine, "rollback", ended("ROLLBACK")),
    ]
    for target, name, function in listeners:
        event.listen(target, name, function)
    try:
        yield counts
    finally:
        for target, name, function in listeners:
            event.remove(target, name, function)
        if db is not None:
            counts["ping"] += db.stats().pinged - pinged_before


@contextlib.contextmanager
def _pre_ping_off(module: ModuleType | None) -> Iterator[None]:
    # An experiment only: flips SQLAlchemy's private switch to price the ping, and puts back
    # what was there.
    if module is None:
        yield
        return
    engine = _engine(module)
    assert engine is not None
    pool = engine.sync_engine.pool
    before = pool._pre_ping
    pool._pre_ping = False
    try:
        yield
    finally:
        pool._pre_ping = before


def _fast_path_candidates(dbscope_fast: ModuleType) -> dict[str, Measurement]:
    """Ways a hot read could go, each on dbscope's own engine and pool."""
    engine: AsyncEngine = dbscope_fast.db.engine

    async def driver_connection() -> int:
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver: Any = raw.driver_connection
            record = await driver.fetchrow(RAW_SELECT, random_id())
            assert record is not None
        return 200

    # The same engine and pool, without BEGIN and ROLLBACK around the single statement.
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")

    async def core_autocommit() -> int:
        async with autocommit.connect() as connection:
            await core_one(connection)
        return 200

    async def leased_db(connection: Any) -> JSONResponse:
        return JSONResponse(await raw_one(connection))

    # Set after the fact, as for /session-only: this module's annotations are strings.
    leased_db.__annotations__["connection"] = Annotated[Any, Depends(dbscope_fast.db.leased)]
    dbscope_fast.app.add_api_route("/db-leased", leased_db, methods=["GET"])
    return {
        "fast: async with db.lease() /db": Measurement(asgi_get(dbscope_fast.app, "/db")),
        "fast: Depends(db.leased) /db": Measurement(asgi_get(dbscope_fast.app, "/db-leased")),
        "fast: Core on db.engine, AUTOCOMMIT, no HTTP route": Measurement(core_autocommit),
        "fast: driver connection from db.engine's pool, no HTTP route": Measurement(
            driver_connection
        ),
    }


async def _cprofiled(call: Call, count: int) -> pstats.Stats:
    """cProfile around ``count`` requests, inside the running loop."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        for _ in range(count):
            await call()
    finally:
        profiler.disable()
    return pstats.Stats(profiler)


def _calls(stats: pstats.Stats, count: int) -> dict[str, Any]:
    """Calls per request in total, and dbscope's own functions with their calls and time."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = sum(entry[1] for entry in table.values())
    own = []
    for (filename, line, function), entry in table.items():
        if "/dbscope/" in filename and "/benchmarks/" not in filename:
            primitive, calls, tottime, cumtime = entry[0], entry[1], entry[2], entry[3]
            own.append(
                {
                    "function": f"{Path(filename).name}:{line}({function})",
                    "calls_per_request": round(calls / count, 2),
                    "primitive_calls_per_request": round(primitive / count, 2),
                    "own_us_per_request": round(tottime / count * 1e6, 1),
                    "cumulative_us_per_request": round(cumtime / count * 1e6, 1),
                }
            )
    own.sort(key=lambda row: -row["cumulative_us_per_request"])
    return {"calls_per_request": round(total / count, 1), "dbscope_functions": own}


def _top(stats: pstats.Stats, count: int) -> str:
    buffer = io.StringIO()
    stats.stream = buffer  # type: ignore[attr-defined]
    stats.sort_stats("tottime").print_stats(40)
    return f"cProfile over {count} requests (times are totals)\n{buffer.getvalue()}"


def run(output: Path, env: dict[str, str]) -> dict[str, Any]:
    """Profile the variants in this process and write the results under ``output``."""
    os.environ.update(env)
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {CORE})
    try:
        modules = {
            name: importlib.import_module(f"benchmarks.variants.{name}") for name in VARIANTS
        }
        for name in ("blog", "dbscope_session"):
            _add_session_only(modules[name])
        results = loadgen.run_async(_measure(modules, output))
    finally:
        os.sched_setaffinity(0, before)
    (output / "profile.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


@contextlib.asynccontextmanager
async def _started(modules: dict[str, ModuleType]) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for module in modules.values():
            await stack.enter_async_context(module.app.router.lifespan_context(module.app))
        yield


async def _measure(modules: dict[str, ModuleType], output: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"requests_per_measurement": REQUESTS, "repeats": REPEATS}
    async with _started(modules):
        measurements: dict[str, Measurement] = {}
        for name, module in modules.items():
            measurements[f"{name} /nodb"] = Measurement(asgi_get(module.app, "/nodb"))
            measurements[f"{name} /db"] = Measurement(asgi_get(module.app, "/db"))
            if name == "blog":
                route = asgi_get(module.app, "/db")
                measurements[f"{name} /db, no pre-ping"] = Measurement(route, module)
            if name in ("blog", "dbscope_session"):
                measurements[f"{name} /session-only"] = Measurement(
                    asgi_get(module.app, "/session-only")
                )
        measurements.update(_fast_path_candidates(modules["dbscope_fast"]))
        results["timings"] = await per_request(measurements)
        trips: dict[str, dict[str, float]] = {}
        for name, module in modules.items():
            engine = _engine(module)
            if engine is None or name == "dbscope_fast":
                continue  # no engine, or statements on the driver connection, unseen by events
            call = asgi_get(module.app, "/db")
            with counted_round_trips(module, engine) as counts:
                for _ in range(200):
                    await call()
            trips[name] = {kind: n / 200 for kind, n in sorted(counts.items())}
        results["round_trips_per_db_request"] = trips
        calls: dict[str, Any] = {}
        for name in ("blog", "dbscope_session"):
            stats = await _cprofiled(asgi_get(modules[name].app, "/db"), PROFILED_REQUESTS)
            calls[name] = _calls(stats, PROFILED_REQUESTS)
            (output / f"profile-cprofile-{name}.txt").write_text(_top(stats, PROFILED_REQUESTS))
        results["calls_per_db_request"] = calls
        # Twenty ORM reads in one unit: what each statement costs, apart from the request's.
        results["calls_per_queries_request"] = {}
        for name in ("blog", "dbscope_session"):
            call = asgi_get(modules[name].app, QUERIES)
            for _ in range(20):
                await call()  # the statement compiled and cached, as in a running service
            stats = await _cprofiled(call, 200)
            results["calls_per_queries_request"][name] = _calls(stats, 200)
        tree = await _pyinstrument(asgi_get(modules["dbscope_session"].app, "/db"))
        (output / "profile-pyinstrument-dbscope-db.txt").write_text(tree)
    return results


async def _pyinstrument(call: Call) -> str:
    from pyinstrument import Profiler  # only the benchmark environment has it

    profiler = Profiler(interval=0.0002, async_mode="disabled")
    profiler.start()
    for _ in range(REQUESTS):
        await call()
    profiler.stop()
    text: str = profiler.output_text(unicode=True, color=False, show_all=False)
    return text
