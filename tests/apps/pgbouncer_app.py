"""The app behind tests/test_pgbouncer_http.py, served by uvicorn in a subprocess.

One Database per driver and PgBouncer mode, each from the environment behind its own prefix
(``ASYNCPG_TRANSACTION_DATABASE_URL``, ``ASYNCPG_TRANSACTION_PGBOUNCER``, ...), each serving
the same routes under its name. The test creates the table ``pgb_notes (source, note)``.
"""

import contextlib
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database

NAMES = (
    "asyncpg-transaction",
    "psycopg-transaction",
    "asyncpg-transaction-prepared",
    "psycopg-transaction-prepared",
)
INSERT = text("INSERT INTO pgb_notes (source, note) VALUES (:source, :note)")


def routes(name: str, db: Database, committed: list[str]) -> APIRouter:
    """The routes of one Database, under /name."""
    router = APIRouter(prefix=f"/{name}")
    Session = Annotated[AsyncSession, Depends(db.session)]

    @router.post("/notes/{note}")
    async def add(note: str, session: Session) -> dict[str, str]:
        """Store a note; on commit, remember it was committed."""
        await session.execute(INSERT, {"source": name, "note": note})
        db.on_commit(lambda: committed.append(note))
        return {"note": note}

    @router.post("/notes/{note}/refused")
    async def refuse(note: str, session: Session) -> None:
        """Store a note, then answer 409: the unit rolls back and the hook never runs."""
        await session.execute(INSERT, {"source": name, "note": note})
        db.on_commit(lambda: committed.append(note))
        raise HTTPException(409, "stored, then refused")

    @router.get("/committed")
    async def hooks() -> list[str]:
        """The notes whose on-commit hook ran."""
        return committed

    return router


databases = {name: Database.from_env(name.upper().replace("-", "_") + "_") for name in NAMES}


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for db in databases.values():
            await stack.enter_async_context(db)
        yield


app = FastAPI(lifespan=lifespan)
for name, db in databases.items():
    app.include_router(routes(name, db, []))
