"""dbscope's Session dependency: one unit of work per request, committed before the response.

:func:`session_app` builds the app for any Database, so that the variants with metrics and
SQL comments on (dbscope_metrics.py, dbscope_tags.py) serve the very same endpoints.
"""

from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from benchmarks.variants.common import (
    HOLD_SQL,
    NODB_BODY,
    bench_settings,
    orm_change,
    orm_many,
    orm_one,
)
from dbscope import Database


def session_app(db: Database) -> FastAPI:
    """The benchmark's endpoints on ``Depends(db.session)``."""
    app = FastAPI(lifespan=db.lifespan)
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.get("/db")
    async def one(session: Session) -> JSONResponse:
        return JSONResponse(await orm_one(session))

    @app.get("/queries")
    async def many(session: Session, q: int = 1) -> JSONResponse:
        return JSONResponse(await orm_many(session, q))

    @app.get("/updates")
    async def change(session: Session, q: int = 1) -> JSONResponse:
        return JSONResponse(await orm_change(session, q))  # committed before the response

    @app.get("/nodb")
    async def nodb() -> JSONResponse:
        return JSONResponse(NODB_BODY)

    @app.get("/hold")
    async def hold(session: Session) -> JSONResponse:
        await session.execute(text(HOLD_SQL))
        return JSONResponse(NODB_BODY)

    return app


settings = bench_settings()
db = Database(settings.sqlalchemy_url, **settings.dbscope_options)
app = session_app(db)
# The profile (benchmarks/profiling.py) adds a route that takes a session and runs no SQL.
Session = Annotated[AsyncSession, Depends(db.session)]
