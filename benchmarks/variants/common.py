"""What every variant shares: the model, the settings, and the work each endpoint does.

Each variant only decides how a request gets its session (or connection); the SQL work is
the same code everywhere, so the differences measured are the database layers' own.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

if TYPE_CHECKING:
    import asyncpg

TABLE: Final = "bench_world"
ROWS: Final = 10_000
# How long GET /hold keeps its connection: the overload scenario's unit of work.
HOLD_SECONDS: Final = 0.05
HOLD_SQL: Final = f"SELECT pg_sleep({HOLD_SECONDS})"
MAX_QUERIES: Final = 500
NODB_BODY: Final = {"message": "Hello, World!"}

Row = dict[str, int]


class Base(DeclarativeBase):
    """The declarative base of the benchmark model."""


class World(Base):
    """A row of the TechEmpower ``World`` table, under a name no test uses."""

    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(primary_key=True)
    randomnumber: Mapped[int]


WORLD: Final = Base.metadata.tables[TABLE]
SELECT_ROW: Final = select(WORLD.c.id, WORLD.c.randomnumber).where(WORLD.c.id == bindparam("id"))
UPDATE_ROW: Final = (
    update(WORLD).where(WORLD.c.id == bindparam("w_id")).values(randomnumber=bindparam("w_number"))
)
RAW_SELECT: Final = f"SELECT id, randomnumber FROM {TABLE} WHERE id = $1"
RAW_UPDATE: Final = f"UPDATE {TABLE} SET randomnumber = $2 WHERE id = $1"


@dataclass(frozen=True)
class BenchSettings:
    """The settings every variant reads from the environment, so that all pools match.

    Attributes:
        url: a PostgreSQL URL without a driver (``BENCH_DATABASE_URL``).
        pool_size: connections in the pool (``BENCH_POOL_SIZE``).
        max_overflow: connections beyond the pool (``BENCH_MAX_OVERFLOW``).
        pool_timeout: seconds a request waits for a connection (``BENCH_POOL_TIMEOUT``);
            None leaves each library's own default.
        pool_max_waiters: dbscope's bound on the wait line (``BENCH_POOL_MAX_WAITERS``);
            None leaves it unbounded. Only dbscope's variants read it: no other layer has one.
        pool_pre_ping_after: seconds idle before dbscope pings a connection
            (``BENCH_POOL_PRE_PING_AFTER``); None leaves dbscope's default. Only
            benchmarks/instructions.py sets it, whose process runs under callgrind.
        defer_begin: whether dbscope's units begin their transaction at the first statement
            that is not a plain read (``BENCH_DEFER_BEGIN``, 0 or 1); None leaves dbscope's
            default (on). Set to 0 to measure the Session path as it was before.
    """

    url: str
    pool_size: int
    max_overflow: int
    pool_timeout: float | None
    pool_max_waiters: int | None = None
    pool_pre_ping_after: float | None = None
    defer_begin: bool | None = None

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with SQLAlchemy's asyncpg driver named."""
        return self.url.replace("postgresql://", "postgresql+asyncpg://", 1)

    @property
    def engine_options(self) -> dict[str, Any]:
        """The pool options, in ``create_async_engine``'s words."""
        options: dict[str, Any] = {
            "pool_size": self.pool_size,
            "max_overflow": self.max_overflow,
        }
        if self.pool_timeout is not None:
            options["pool_timeout"] = self.pool_timeout
        return options

    @property
    def dbscope_options(self) -> dict[str, Any]:
        """The pool options for ``Database(...)``: the same, plus dbscope's wait line."""
        options = self.engine_options
        if self.pool_max_waiters is not None:
            options["pool_max_waiters"] = self.pool_max_waiters
        if self.pool_pre_ping_after is not None:
            options["pool_pre_ping_after"] = self.pool_pre_ping_after
        if self.defer_begin is not None:
            options["defer_begin"] = self.defer_begin
        return options


def bench_settings() -> BenchSettings:
    """Read the ``BENCH_*`` variables, with the defaults of a local run."""
    environ = os.environ
    return BenchSettings(
        url=environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test"),
        pool_size=int(environ.get("BENCH_POOL_SIZE", "16")),
        max_overflow=int(environ.get("BENCH_MAX_OVERFLOW", "0")),
        pool_timeout=float(environ["BENCH_POOL_TIMEOUT"])
        if environ.get("BENCH_POOL_TIMEOUT")
        else None,
        pool_max_waiters=int(environ["BENCH_POOL_MAX_WAITERS"])
        if environ.get("BENCH_POOL_MAX_WAITERS")
        else None,
        pool_pre_ping_after=float(environ["BENCH_POOL_PRE_PING_AFTER"])
        if environ.get("BENCH_POOL_PRE_PING_AFTER")
        else None,
        defer_begin=environ["BENCH_DEFER_BEGIN"] == "1"
        if environ.get("BENCH_DEFER_BEGIN")
        else None,
    )


def random_id() -> int:
    """A random row id, as the TechEmpower tests ask (not for anything secret)."""
    return random.randint(1, ROWS)


def random_ids(count: int) -> list[int]:
    """``count`` distinct random ids, sorted so that concurrent updates lock in one order."""
    return sorted(random.sample(range(1, ROWS + 1), count))


def clamp(queries: int) -> int:
    """The number of rows a request asks for, held to TechEmpower's 1..500."""
    return min(max(queries, 1), MAX_QUERIES)


# -- the ORM work: every session-based variant runs exactly this --------------------------


async def orm_one(session: AsyncSession) -> Row:
    """Read one random row through the ORM."""
    world = await session.get(World, random_id())
    assert world is not None
    return {"id": world.id, "randomNumber": world.randomnumber}


async def orm_many(session: AsyncSession, queries: int) -> list[Row]:
    """Read ``queries`` random rows, one query after another, in one session."""
    rows = []
    for row_id in random_ids(clamp(queries)):
        world = await session.get(World, row_id)
        assert world is not None
        rows.append({"id": world.id, "randomNumber": world.randomnumber})
    return rows


async def orm_change(session: AsyncSession, queries: int) -> list[Row]:
    """Read ``queries`` random rows and give each a new number; the caller commits."""
    rows = []
    for row_id in random_ids(clamp(queries)):
        world = await session.get(World, row_id)
        assert world is not None
        world.randomnumber = random_id()
        rows.append({"id": world.id, "randomNumber": world.randomnumber})
    return rows


# -- the Core work: the same statements on a bare connection ------------------------------


async def core_one(connection: AsyncConnection) -> Row:
    """Read one random row with a Core statement."""
    row = (await connection.execute(SELECT_ROW, {"id": random_id()})).one()
    return {"id": row.id, "randomNumber": row.randomnumber}


async def core_many(connection: AsyncConnection, queries: int) -> list[Row]:
    """Read ``queries`` random rows, one statement after another, on one connection."""
    rows = []
    for row_id in random_ids(clamp(queries)):
        row = (await connection.execute(SELECT_ROW, {"id": row_id})).one()
        rows.append({"id": row.id, "randomNumber": row.randomnumber})
    return rows


async def core_change(connection: AsyncConnection, queries: int) -> list[Row]:
    """Read ``queries`` random rows and write new numbers in one executemany."""
    rows = await core_many(connection, queries)
    for row in rows:
        row["randomNumber"] = random_id()
    await connection.execute(
        UPDATE_ROW, [{"w_id": row["id"], "w_number": row["randomNumber"]} for row in rows]
    )
    return rows


# -- the driver work: the same statements through asyncpg's own API ------------------------


async def raw_read(connection: asyncpg.Connection, row_id: int) -> Row:
    """Read one row with ``fetchrow`` on an asyncpg connection."""
    record = await connection.fetchrow(RAW_SELECT, row_id)
    assert record is not None
    return {"id": record["id"], "randomNumber": record["randomnumber"]}


async def raw_one(connection: asyncpg.Connection) -> Row:
    """Read one random row."""
    return await raw_read(connection, random_id())


async def raw_many(connection: asyncpg.Connection, queries: int) -> list[Row]:
    """Read ``queries`` random rows, one ``fetchrow`` after another, on one connection."""
    return [await raw_read(connection, row_id) for row_id in random_ids(clamp(queries))]


async def raw_change(connection: asyncpg.Connection, queries: int) -> list[Row]:
    """Read ``queries`` random rows and write new numbers in one executemany; the caller
    holds the transaction."""
    rows = await raw_many(connection, queries)
    for row in rows:
        row["randomNumber"] = random_id()
    await connection.executemany(RAW_UPDATE, [(row["id"], row["randomNumber"]) for row in rows])
    return rows
