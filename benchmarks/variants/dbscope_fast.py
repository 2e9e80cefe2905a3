"""dbscope's fast path for hot endpoints: the asyncpg connection leased from dbscope's pool.

Each endpoint leases the driver connection of one of dbscope's pooled connections with
``async with db.lease()`` and runs the raw asyncpg variant's own functions on it
(``fetchrow``, ``executemany``); ``/updates`` runs them in the driver's transaction. The
block form is the fastest: ``Depends(db.leased)`` gives the same connection through a yield
dependency, whose machinery in FastAPI costs more than the lease itself (see
docs/benchmarks.md). What dbscope still adds over the raw pool: its pool limits and wait
line, its liveness check, 503 on outages (``add_exception_handlers``), and the connection back
in the pool before the response is sent.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from benchmarks.variants.common import (
    NODB_BODY,
    bench_settings,
    raw_change,
    raw_many,
    raw_one,
)
from dbscope import Database
from dbscope.fastapi import add_exception_handlers

settings = bench_settings()
db = Database(settings.sqlalchemy_url, **settings.dbscope_options)
app = FastAPI(lifespan=db.lifespan)
add_exception_handlers(app)


@app.get("/db")
async def one() -> JSONResponse:
    async with db.lease() as connection:
        return JSONResponse(await raw_one(connection))


@app.get("/queries")
async def many(q: int = 1) -> JSONResponse:
    async with db.lease() as connection:
        return JSONResponse(await raw_many(connection, q))


@app.get("/updates")
async def change(q: int = 1) -> JSONResponse:
    async with db.lease() as connection, connection.transaction():
        # Without the driver's transaction each statement would commit by itself.
        return JSONResponse(await raw_change(connection, q))


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
