"""What a storm of cancels and terminated backends leaves in the log, on asyncpg.

``python benchmarks/cancel_noise.py --url postgresql://postgres@127.0.0.1:5432/<a database of
its own>`` (in benchmarks/.venv or the project's .venv) runs ``--rounds`` rounds of 8 units
at once (``db.transaction()``, read-only, ``db.retrying()``, ``db.stream()``,
``db.parallel()``, ``db.lease()``), cancels 3 of them at random moments (a task's
``cancel()``, ``asyncio.timeout`` or anyio's ``move_on_after``), and every 5 rounds
terminates every backend of the database: give it a database no one else uses. A new
connection at each checkout (each soft-invalidated as it is checked out, so that SQLAlchemy
replaces it at the next: dbscope refuses ``pool_recycle=0``) and a ping at each checkout.

It prints what the run left: ERROR records of any logger, the event loop's reports (an
exception never retrieved, a task destroyed pending), errors of neither dbscope nor the
cancel that came out of a unit, and the pool's counters. ``?sslmode=disable`` in the URL
compares asyncpg without its TLS probe (docs/units-of-work.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any, Final

import anyio
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from dbscope import Database, DbscopeError

UNITS_AT_ONCE: Final = 8
CANCELLED_PER_ROUND: Final = 3
KILL_EVERY: Final = 5
KINDS: Final = ("transaction", "read_only", "retrying", "stream", "parallel", "lease")


class Reports(logging.Handler):
    """Counts the ERROR records, and the event loop's reports, by message."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen[f"{record.name}: {record.getMessage()[:100]}"] += 1

    def loop_report(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        self.seen[f"event loop: {context.get('message')} {context.get('exception')!r}"] += 1


def replaced_at_next_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
    """Mark a connection as it is checked out, for SQLAlchemy to replace at its next."""
    record.invalidate(soft=True)


async def unit(db: Database, kind: str) -> None:
    """One unit of ``kind``, with a short sleep on the server."""
    sleep, pause = text("SELECT pg_sleep(:t)"), {"t": random.choice((0, 0, 0.001, 0.003))}
    if kind in ("transaction", "read_only"):
        async with db.transaction(read_only=kind == "read_only") as session:
            await session.execute(sleep, pause)
    elif kind == "retrying":
        async for attempt in db.retrying(attempts=2):
            async with attempt as session:
                await session.execute(sleep, pause)
    elif kind == "stream":

        async def rows(session: AsyncSession) -> AsyncIterator[Any]:
            async for row in await session.stream(text("SELECT generate_series(1, 50)")):
                yield row

        async with contextlib.aclosing(db.stream(rows)) as stream:
            async for _ in stream:
                pass
    elif kind == "parallel":

        async def one(session: AsyncSession) -> Any:
            return (await session.execute(sleep, pause)).all()

        await db.parallel(one, one)
    else:
        async with db.lease() as connection:
            await connection.fetch("SELECT pg_sleep($1)", pause["t"])


async def cut_short(db: Database, kind: str, odd: Counter[str]) -> None:
    """``unit``, under a timeout of a random length, or cancelled from outside."""
    cause, within = random.choice(("cancel", "timeout", "anyio")), random.uniform(0, 0.006)
    try:
        if cause == "timeout":
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(within):
                    await unit(db, kind)
        elif cause == "anyio":
            with anyio.move_on_after(within):
                await unit(db, kind)
        else:
            await unit(db, kind)
    except (asyncio.CancelledError, DbscopeError):
        raise
    except Exception as error:
        odd[f"{kind}: {type(error).__module__}.{type(error).__name__}"] += 1
        raise


async def terminate_all(url: str) -> None:
    """Terminate every other backend of the database."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                    "datname = current_database() AND pid <> pg_backend_pid() "
                    "AND backend_type = 'client backend'"
                )
            )
    finally:
        await engine.dispose()


async def storm(url: str, rounds: int) -> None:
    reports, odd = Reports(), Counter[str]()
    logging.getLogger().addHandler(reports)
    asyncio.get_running_loop().set_exception_handler(reports.loop_report)
    killer_url = make_url(url).set(drivername="postgresql+asyncpg", query={})
    db = Database(url, pool_size=4, max_overflow=2, pool_pre_ping_after=0)
    async with db:
        opened = Counter[str]()
        event.listen(db.engine.sync_engine, "checkout", replaced_at_next_checkout)
        event.listen(db.engine.sync_engine, "connect", lambda *_: opened.update(["opened"]))
        for number in range(rounds):
            tasks = [
                asyncio.create_task(cut_short(db, random.choice(KINDS), odd))
                for _ in range(UNITS_AT_ONCE)
            ]
            await asyncio.sleep(random.uniform(0, 0.006))
            for task in random.sample(tasks, CANCELLED_PER_ROUND):
                task.cancel()
            if number % KILL_EVERY == KILL_EVERY - 1:
                await terminate_all(killer_url.render_as_string(hide_password=False))
            await asyncio.gather(*tasks, return_exceptions=True)
        stats = db.stats()
    print(f"units: {rounds * UNITS_AT_ONCE}, connections opened: {opened['opened']}")
    print(f"checked out at the end: {stats.checked_out}")
    for name, seen in (("reported", reports.seen), ("raised, neither dbscope's nor a cancel", odd)):
        print(f"{name}: {sum(seen.values())}")
        for line, count in seen.most_common():
            print(f"  {count:>5}  {line}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000)
    parser.add_argument(
        "--url", required=True, help="a PostgreSQL database whose backends it terminates"
    )
    options = parser.parse_args()
    parsed = make_url(options.url)
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+asyncpg")
    asyncio.run(storm(parsed.render_as_string(hide_password=False), options.rounds))


if __name__ == "__main__":
    main()
