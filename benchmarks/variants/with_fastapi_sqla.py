"""fastapi-sqla, set up as its README shows: environment, ``startup()`` lifespan, middleware.

Its engine options come from ``sqlalchemy_*`` environment variables (it lowercases the names
it reads), set here from the benchmark's own settings; its middleware opens a session for
every request and commits responses below 400.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import fastapi_sqla
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_sqla import AsyncSession

from benchmarks.variants.common import (
    NODB_BODY,
    bench_settings,
    orm_change,
    orm_many,
    orm_one,
)

settings = bench_settings()
os.environ["SQLALCHEMY_URL"] = settings.sqlalchemy_url
os.environ["SQLALCHEMY_POOL_SIZE"] = str(settings.pool_size)
os.environ["SQLALCHEMY_MAX_OVERFLOW"] = str(settings.max_overflow)
if settings.pool_timeout is not None:
    os.environ["SQLALCHEMY_POOL_TIMEOUT"] = f"{settings.pool_timeout:g}"  # read as an int


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    await fastapi_sqla.startup()
    yield


app = FastAPI(lifespan=lifespan)
fastapi_sqla.setup_middlewares(app)


@app.get("/db")
async def one(session: AsyncSession) -> JSONResponse:
    return JSONResponse(await orm_one(session))


@app.get("/queries")
async def many(session: AsyncSession, q: int = 1) -> JSONResponse:
    return JSONResponse(await orm_many(session, q))


@app.get("/updates")
async def change(session: AsyncSession, q: int = 1) -> JSONResponse:
    return JSONResponse(await orm_change(session, q))  # the middleware commits


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
