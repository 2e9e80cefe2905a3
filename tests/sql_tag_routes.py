"""What the SQL tag tests (tests/test_sql_tags*.py) share: the ``framework`` tag of the
statements a FastAPI request runs, and a route body that runs one statement."""

import fastapi
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

FRAMEWORK = f"fastapi%3A{fastapi.__version__}"


async def one(session: AsyncSession) -> dict[str, int]:
    """A request that runs one statement."""
    return {"one": int(await session.scalar(text("SELECT 1")) or 0)}
