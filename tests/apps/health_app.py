"""The app behind tests/test_health.py's timed probes, served by uvicorn in a subprocess.

Configured from the environment (``DATABASE_URL``, ``POOL_SIZE``, ``MAX_OVERFLOW``,
``POOL_TIMEOUT``, and ``HEALTH_MAX_AGE`` for the router): ``GET /hold`` keeps a pooled
connection until ``POST /release`` (or for ``seconds`` at most), so that the test can check
every connection out and make more requests wait in line while it times ``/readyz``, and
then let them all through at once.
"""

import asyncio
import contextlib
import os
from typing import Annotated

from fastapi import Depends, FastAPI, Query
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

import dbscope.fastapi
from dbscope import Database

db = Database.from_env()
app = FastAPI(lifespan=db.lifespan)
max_age = float(os.environ.get("HEALTH_MAX_AGE", "1"))
app.include_router(dbscope.fastapi.health_router(db, max_age=max_age))
Session = Annotated[AsyncSession, Depends(db.session)]


released = asyncio.Event()


@app.get("/hold")
async def hold(session: Session, seconds: Annotated[float, Query(le=30)]) -> dict[str, int]:
    """Check a connection out (one query), then keep it until released, ``seconds`` at most."""
    one = (await session.execute(text("SELECT 1"))).scalar_one()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(released.wait(), seconds)
    return {"one": int(one)}


@app.post("/release")
async def release() -> None:
    """Let every /hold request, held now or later, give its connection back."""
    released.set()
