"""What the health tests (tests/test_health*.py) share: an app of the health router alone,
and a probe asked over HTTP and timed."""

import time
from typing import Any

import httpx
from fastapi import FastAPI

import dbscope.fastapi
from dbscope import Database


def health_app(db: Database, *, lifespan: bool = True, **options: Any) -> FastAPI:
    """An app of the health router alone, connecting ``db`` in its lifespan if asked."""
    app = FastAPI(lifespan=db.lifespan if lifespan else None)
    app.include_router(dbscope.fastapi.health_router(db, **options))
    return app


async def timed_get(base_url: str, path: str) -> tuple[httpx.Response, float]:
    """GET ``path`` on a connection of its own; the response and the seconds it took."""
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        started = time.perf_counter()
        response = await client.get(path)
        return response, time.perf_counter() - started
