"""Raw asyncpg pool: the upper bound. No ORM, no SQLAlchemy, no pre-ping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from benchmarks.variants.common import (
    NODB_BODY,
    bench_settings,
    raw_change,
    raw_many,
    raw_one,
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


@app.get("/db")
async def one() -> JSONResponse:
    async with pools[0].acquire() as connection:
        return JSONResponse(await raw_one(connection))


@app.get("/queries")
async def many(q: int = 1) -> JSONResponse:
    async with pools[0].acquire() as connection:
        return JSONResponse(await raw_many(connection, q))


@app.get("/updates")
async def change(q: int = 1) -> JSONResponse:
    async with pools[0].acquire() as connection, connection.transaction():
        rows = await raw_change(connection, q)
    return JSONResponse(rows)


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
