"""The quickest proof that a request's unit of work commits, on every backend."""

from typing import Annotated

import httpx
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database


async def test_a_request_commits_its_write(database_url: str) -> None:
    """A row written by an endpoint is there after the response, read on another session."""
    db = Database(database_url)
    app = FastAPI(lifespan=db.lifespan)
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/rows/{value}")
    async def add(value: int, session: Session) -> dict[str, int]:
        await session.execute(text("INSERT INTO smoke (value) VALUES (:v)"), {"v": value})
        return {"value": value}

    async with db.lifespan(app):
        async with db.transaction() as session:
            await session.execute(text("DROP TABLE IF EXISTS smoke"))
            await session.execute(text("CREATE TABLE smoke (value INTEGER)"))
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.post("/rows/7")
        async with db.transaction() as session:
            stored = (await session.execute(text("SELECT value FROM smoke"))).scalars().all()
            await session.execute(text("DROP TABLE smoke"))
        assert response.status_code == 200
        assert stored == [7]
        assert db.stats().checked_out == 0
