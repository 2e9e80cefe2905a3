"""The quickest proof that a request's unit of work commits, on every backend."""

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from tests.helpers import Tables, app_with, send, stored


async def test_a_request_commits_its_write(database_url: str, tables: Tables) -> None:
    """A row written by an endpoint is there after the response, read on another session."""
    await tables.create("smoke", "value INTEGER")
    db = Database(database_url)

    async def add(value: int, session: AsyncSession) -> dict[str, int]:
        await session.execute(text("INSERT INTO smoke (value) VALUES (:v)"), {"v": value})
        return {"value": value}

    app = app_with(db.session, {"POST /rows/{value}": add}, lifespan=db.lifespan)
    async with db.lifespan(app):
        response = await send(app, "POST /rows/7", raise_app_exceptions=True)
        values = await stored(db, "SELECT value FROM smoke")
        assert response.status_code == 200
        assert values == [7]
        assert db.stats().checked_out == 0
