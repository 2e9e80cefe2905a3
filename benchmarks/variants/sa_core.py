"""SQLAlchemy Core on an AsyncEngine connection: no ORM, no session, SQLAlchemy's defaults."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from benchmarks.variants.common import (
    NODB_BODY,
    bench_settings,
    core_change,
    core_many,
    core_one,
)

settings = bench_settings()
engines: list[AsyncEngine] = []


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine = create_async_engine(settings.sqlalchemy_url, **settings.engine_options)
    engines.append(engine)
    try:
        yield
    finally:
        engines.remove(engine)
        await engine.dispose()


app = FastAPI(lifespan=lifespan)


@app.get("/db")
async def one() -> JSONResponse:
    async with engines[0].connect() as connection:
        return JSONResponse(await core_one(connection))


@app.get("/queries")
async def many(q: int = 1) -> JSONResponse:
    async with engines[0].connect() as connection:
        return JSONResponse(await core_many(connection, q))


@app.get("/updates")
async def change(q: int = 1) -> JSONResponse:
    async with engines[0].begin() as connection:
        rows = await core_change(connection, q)
    return JSONResponse(rows)


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
