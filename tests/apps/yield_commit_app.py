"""The app behind tests/test_yield_dependencies.py, served by uvicorn in a subprocess.

An app's own yield dependency that commits after ``yield``, as code moving to dbscope often
keeps beside ``db.session``: here an audit unit of work, ``async with db.transaction()``
around the ``yield``. The same dependency serves two routes: with FastAPI's default scope
(``"request"``), and with ``scope="function"``. Configured from the environment
(``DATABASE_URL``); the test creates the tables.
"""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database

db = Database.from_env()
app = FastAPI(lifespan=db.lifespan)


async def audit_session() -> AsyncIterator[AsyncSession]:
    """A unit of work of its own, committed when the block ends: after ``yield``."""
    async with db.transaction() as session:
        yield session


RequestScoped = Annotated[AsyncSession, Depends(audit_session)]
FunctionScoped = Annotated[AsyncSession, Depends(audit_session, scope="function")]


@app.post("/request-scoped/rows/{value}")
async def add_row(value: int, audit: RequestScoped) -> dict[str, int]:
    """Insert one row through the request-scoped dependency."""
    await audit.execute(text("INSERT INTO yd_rows (value) VALUES (:value)"), {"value": value})
    return {"value": value}


@app.post("/function-scoped/rows/{value}")
async def add_row_before_the_response(value: int, audit: FunctionScoped) -> dict[str, int]:
    """Insert one row through the function-scoped dependency."""
    await audit.execute(text("INSERT INTO yd_rows (value) VALUES (:value)"), {"value": value})
    return {"value": value}


@app.post("/request-scoped/children/{parent_id}")
async def add_child(parent_id: int, audit: RequestScoped) -> dict[str, int]:
    """Insert a child whose deferred foreign key is checked only at COMMIT."""
    statement = text("INSERT INTO yd_child (parent_id) VALUES (:parent_id)")
    await audit.execute(statement, {"parent_id": parent_id})
    return {"parent_id": parent_id}


@app.post("/function-scoped/children/{parent_id}")
async def add_child_before_the_response(parent_id: int, audit: FunctionScoped) -> dict[str, int]:
    """The same child, through the function-scoped dependency."""
    statement = text("INSERT INTO yd_child (parent_id) VALUES (:parent_id)")
    await audit.execute(statement, {"parent_id": parent_id})
    return {"parent_id": parent_id}
