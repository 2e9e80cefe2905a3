"""advanced-alchemy's FastAPI extension, set up as its documentation shows.

``AdvancedAlchemy(config=..., app=app)`` adds its session middleware and lifespan; endpoints
take ``Annotated[AsyncSession, Depends(alchemy.provide_session())]``; ``commit_mode=
"autocommit"`` commits 2xx responses in the middleware.
"""

from __future__ import annotations

from typing import Annotated

from advanced_alchemy.extensions.fastapi import (
    AdvancedAlchemy,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)
from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from benchmarks.variants.common import (
    NODB_BODY,
    bench_settings,
    orm_change,
    orm_many,
    orm_one,
)

settings = bench_settings()
config = SQLAlchemyAsyncConfig(
    connection_string=settings.sqlalchemy_url,
    engine_config=EngineConfig(**settings.engine_options),
    session_config=AsyncSessionConfig(expire_on_commit=False, autoflush=False),
    commit_mode="autocommit",
)
app = FastAPI()
alchemy = AdvancedAlchemy(config=config, app=app)
Session = Annotated[AsyncSession, Depends(alchemy.provide_session())]


@app.get("/db")
async def one(session: Session) -> JSONResponse:
    return JSONResponse(await orm_one(session))


@app.get("/queries")
async def many(session: Session, q: int = 1) -> JSONResponse:
    return JSONResponse(await orm_many(session, q))


@app.get("/updates")
async def change(session: Session, q: int = 1) -> JSONResponse:
    return JSONResponse(await orm_change(session, q))  # the middleware commits


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)
