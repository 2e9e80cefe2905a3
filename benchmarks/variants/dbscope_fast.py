"""dbscope's fast path for hot endpoints: the asyncpg connection leased from dbscope's pool.

``Depends(db.leased)`` gives each request the driver connection of one of dbscope's pooled
connections; the endpoints run the raw asyncpg variant's own functions on it (``fetchrow``,
``executemany``), and ``/updates`` runs them in the driver's transaction. What dbscope still
adds over the raw pool: its pool limits, its liveness check, 503 on outages, and the
connection back in the pool before the response is sent.
"""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse

from benchmarks.variants.common import (
    NODB_BODY,
    bench_settings,
    raw_change,
    raw_many,
    raw_one,
)
from dbscope import Database

settings = bench_settings()
db = Database(settings.sqlalchemy_url, **settings.dbscope_options)
app = FastAPI(lifespan=db.lifespan)
Leased = Annotated[asyncpg.Connection, Depends(db.leased)]


@app.get("/db")
async def one(connection: Leased) -> JSONResponse:
    return JSONResponse(await raw_one(connection))


@app.get("/queries")
async def many(connection: Leased, q: int = 1) -> JSONResponse:
    return JSONResponse(await raw_many(connection, q))


@app.get("/updates")
async def change(connection: Leased, q: int = 1) -> JSONResponse:
    async with connection.transaction():  # each statement alone would commit by itself
        rows = await raw_change(connection, q)
    return JSONResponse(rows)


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
