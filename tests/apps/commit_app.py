"""The app behind tests/test_commit_before_response.py, served by uvicorn in a subprocess.

Configured from the environment (``DATABASE_URL``); the test creates the tables.
"""

from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database

db = Database.from_env()
app = FastAPI(lifespan=db.lifespan)
Session = Annotated[AsyncSession, Depends(db.session)]


@app.post("/children/{parent_id}")
async def add_child(parent_id: int, session: Session) -> dict[str, int]:
    """Insert a child; its deferred foreign key is checked only at COMMIT."""
    statement = text("INSERT INTO cbr_child (parent_id) VALUES (:parent_id)")
    await session.execute(statement, {"parent_id": parent_id})
    return {"parent_id": parent_id}


@app.post("/rows/{value}")
async def add_row(value: int, session: Session) -> dict[str, int]:
    """Insert one row."""
    await session.execute(text("INSERT INTO cbr_rows (value) VALUES (:value)"), {"value": value})
    return {"value": value}
