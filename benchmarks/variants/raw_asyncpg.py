"""Raw asyncpg pool: the upper bound. No ORM, no SQLAlchemy, no pre-ping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from benchmarks.variants.common import (
    NODB_BODY,
    RAW_SELECT,
    RAW_UPDATE,
    Row,
    bench_settings,
    clamp,
    random_id,
    random_ids,
)

settings = bench_settings()
pools: list[asyncpg.Pool] = []


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    size = settings.pool_size + settings.max_overflow
    pool = await asyncpg.create_pool(settings.url, min_size=size, max_size=size)
    pools.append(pool)
    try:
        yield
    finally:
        pools.remove(pool)
        await pool.close()


app = FastAPI(lifespan=lifespan)


async def _read(connection: asyncpg.Connection, row_id: int) -> Row:
    record = await connection.fetchrow(RAW_SELECT, row_id)
    assert record is not None
    return {"id": record["id"], "randomNumber": record["randomnumber"]}


@app.get("/db")
async def one() -> JSONResponse:
    async with pools[0].acquire() as connection:
        return JSONResponse(await _read(connection, random_id()))


@app.get("/queries")
async def many(q: int = 1) -> JSONResponse:
    async with pools[0].acquire() as connection:
        return JSONResponse([await _read(connection, i) for i in random_ids(clamp(q))])


@app.get("/updates")
async def change(q: int = 1) -> JSONResponse:
    async with pools[0].acquire() as connection, connection.transaction():
        rows = [await _read(connection, i) for i in random_ids(clamp(q))]
        for row in rows:
            row["randomNumber"] = random_id()
        await connection.executemany(RAW_UPDATE, [(r["id"], r["randomNumber"]) for r in rows])
    return JSONResponse(rows)


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
