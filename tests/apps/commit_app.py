"""The app behind tests/test_commit_before_response.py, served by uvicorn in a subprocess.

Configured from the environment (``DATABASE_URL``); the test creates the tables.
"""

from typing import Annotated, Literal

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database

db = Database.from_env()
app = FastAPI(lifespan=db.lifespan)
Session = Annotated[AsyncSession, Depends(db.session)]

# A child's deferred foreign key is checked only at COMMIT; a row has no constraint at all.
INSERTS = {
    "children": "INSERT INTO cbr_child (parent_id) VALUES (:value)",
    "rows": "INSERT INTO cbr_rows (value) VALUES (:value)",
}


@app.post("/{kind}/{value}")
async def insert(kind: Literal["children", "rows"], value: int, session: Session) -> dict[str, int]:
    """Insert one child (``value`` is its parent's id) or one row."""
    await session.execute(text(INSERTS[kind]), {"value": value})
    return {"value": value}
