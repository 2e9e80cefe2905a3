"""The plain blog pattern: an ORM AsyncSession from async_sessionmaker behind a yield dependency.

This is the session manager most FastAPI projects copy: a module-level engine with
``pool_pre_ping``, an ``async_sessionmaker(expire_on_commit=False, autoflush=False)``, a
dependency that yields the session and closes it, and endpoints that commit their writes.
It is the reference every other variant is compared with.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine

from benchmarks.variants.common import (
    HOLD_SQL,
    NODB_BODY,
    bench_settings,
    orm_change,
    orm_many,
    orm_one,
)


class DatabaseSessionManager:
    """The blog's session manager, as it is usually copied."""

    def __init__(self, url: str, **engine_options: object) -> None:
        self.engine = create_async_engine(url, pool_pre_ping=True, **engine_options)
        self.sessionmaker = async_sessionmaker(
            bind=self.engine, expire_on_commit=False, autoflush=False
        )

    async def close(self) -> None:
        await self.engine.dispose()

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        session = self.sessionmaker()
        try:
            yield session
        except Exception:
            await session.rollback()
            raise
        finally:
            await session.close()


settings = bench_settings()
sessionmanager = DatabaseSessionManager(settings.sqlalchemy_url, **settings.engine_options)


async def get_session() -> AsyncIterator[AsyncSession]:
    async with sessionmanager.session() as session:
        yield session


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await sessionmanager.close()


app = FastAPI(lifespan=lifespan)
Session = Annotated[AsyncSession, Depends(get_session)]


@app.get("/db")
async def one(session: Session) -> JSONResponse:
    return JSONResponse(await orm_one(session))


@app.get("/queries")
async def many(session: Session, q: int = 1) -> JSONResponse:
    return JSONResponse(await orm_many(session, q))


@app.get("/updates")
async def change(session: Session, q: int = 1) -> JSONResponse:
    rows = await orm_change(session, q)
    await session.commit()
    return JSONResponse(rows)


@app.get("/nodb")
async def nodb() -> JSONResponse:
    return JSONResponse(NODB_BODY)


@app.get("/hold")
async def hold(session: Session) -> JSONResponse:
    await session.execute(text(HOLD_SQL))
    return JSONResponse(NODB_BODY)
