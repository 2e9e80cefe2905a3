"""Small helpers shared by the test modules."""

import contextlib
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine


def client_for(app: FastAPI) -> httpx.AsyncClient:
    """An in-process client that answers a 500 like a server does instead of raising."""
    transport = httpx.ASGITransport(app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test")


@contextlib.asynccontextmanager
async def admin(database_url: str) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection of the test's own, outside dbscope."""
    engine = create_async_engine(database_url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            yield connection
    finally:
        await engine.dispose()
