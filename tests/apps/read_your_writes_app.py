"""The app behind tests/test_read_your_writes.py, served by uvicorn in a subprocess.

Configured from the environment: ``DATABASE_URL`` and ``DATABASE_REPLICA_URLS`` (a primary
and its streaming replica), ``REPLICA_WAIT`` and the other settings ``Database.from_env()``
reads; ``READ_YOUR_WRITES=off`` leaves the middleware out. The test creates the table
``ryw_notes (id serial, body text)``.

Writes go through ``Depends(db.session)`` (the primary), reads through
``Depends(db.read_session)`` (a replica when one may serve them); each read says whether it
ran on a server in recovery (a replica). ``GET /stats`` shows the app's ``db.stats()``.
"""

import os
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from fastapi.responses import RedirectResponse
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database
from dbscope.fastapi import ReadYourWrites

db = Database.from_env()
app = FastAPI(lifespan=db.lifespan)
if os.environ.get("READ_YOUR_WRITES", "on") == "on":
    app.add_middleware(ReadYourWrites)
Session = Annotated[AsyncSession, Depends(db.session)]
ReadSession = Annotated[AsyncSession, Depends(db.read_session)]

INSERT = text("INSERT INTO ryw_notes (body) VALUES (:body) RETURNING id")
# The one statement of a read; the test counts its runs in the replica's pg_stat_statements.
READ = text("SELECT (SELECT body FROM ryw_notes WHERE id = :id), pg_is_in_recovery()")


async def insert(session: AsyncSession, body: str) -> int:
    """Insert one note; its id."""
    return int((await session.execute(INSERT, {"body": body})).scalar_one())


@app.post("/notes")
async def post_note(body: str, session: Session) -> RedirectResponse:
    """A browser's write: store the note, then send the browser to read it (POST, 303, GET)."""
    note = await insert(session, body)
    return RedirectResponse(f"/notes/{note}", status_code=303)


@app.post("/api/notes", status_code=201)
async def post_api_note(payload: dict[str, str], session: Session) -> dict[str, int]:
    """An API client's write: the note's id, and the write token in the response header."""
    return {"id": await insert(session, payload["body"])}


@app.get("/notes/{note}")
async def get_note(note: int, session: ReadSession) -> dict[str, Any]:
    """The note (None when this read does not see it), and whether a replica served it."""
    body, in_recovery = (await session.execute(READ, {"id": note})).one()
    return {"body": body, "on_replica": in_recovery}


@app.get("/stats")
async def stats() -> dict[str, Any]:
    """The replica's numbers and the reads that fell back to the primary, by why."""
    found = db.stats()
    replica = found.replicas[0]
    return {
        "state": replica.state,
        "served": replica.served,
        "fallbacks": dict(found.fallbacks),
    }
