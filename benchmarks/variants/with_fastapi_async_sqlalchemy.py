"""fastapi-async-sqlalchemy, set up as its README shows: ``SQLAlchemyMiddleware`` and ``db``.

The README's example passes ``pool_pre_ping=True`` in ``engine_args``; ``commit_on_exit=True``
makes the middleware commit each request, as the other variants do.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from fastapi_async_sqlalchemy import SQLAlchemyMiddleware, db

from benchmarks.variants.common import (
    NODB_BODY,
    bench_settings,
    orm_change,
    orm_many,
    orm_one,
)

settings = bench_settings()
app = FastAPI()
app.add_middleware(
    SQLAlchemyMiddleware,
    db_url=settings.sqlalchemy_url,
    engine_args={"pool_pre_ping": True, **settings.engine_options},
    commit_on_exit=True,
)


@app.get("/db")
async def one() -> JSONResponse:
    return JSONResponse(await orm_one(db.session))


@app.get("/queries")
async def many(q: int = 1) -> JSONResponse:
    return JSONResponse(await orm_many(db.session, q))


@app.get("/updates")
async def change(q: int = 1) -> JSONResponse:
    return JSONResponse(await orm_change(db.session, q))  # the middleware commits


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
