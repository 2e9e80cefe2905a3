"""dbscope's fastest path today: Core statements on ``db.engine``, inside dbscope's lifespan.

dbscope has no dedicated fast path for hot endpoints yet; the quickest thing its public API
offers is its engine (with dbscope's pool settings and pre-ping) used without a session. The
profile in docs/benchmarks.md lists what a real fast path would remove.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from benchmarks.variants.common import (
    NODB_BODY,
    bench_settings,
    core_change,
    core_many,
    core_one,
)
from dbscope import Database

settings = bench_settings()
db = Database(settings.sqlalchemy_url, **settings.engine_options)
app = FastAPI(lifespan=db.lifespan)


@app.get("/db")
async def one() -> JSONResponse:
    async with db.engine.connect() as connection:
        return JSONResponse(await core_one(connection))


@app.get("/queries")
async def many(q: int = 1) -> JSONResponse:
    async with db.engine.connect() as connection:
        return JSONResponse(await core_many(connection, q))


@app.get("/updates")
async def change(q: int = 1) -> JSONResponse:
    async with db.engine.begin() as connection:
        rows = await core_change(connection, q)
    return JSONResponse(rows)


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
