"""The endpoints of the notes service: one router per resource, each built on a Database.

Each function takes the app's :class:`dbscope.Database` and returns an ``APIRouter`` whose
endpoints that write ask for ``db.session``: one session per request, committed after the
endpoint returns and before the response, rolled back when it raises. Those that only read
ask for ``db.read_session``: a read-only transaction, which on SQLite reads beside the one
writer instead of waiting its turn, and with replicas runs on one. ``create_app()`` includes
them.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# run time, and they name `Session`, an alias local to each router's function.
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from dbscope import Database

from .models import Author, Note
from .schemas import MAX_ID, AuthorCreate, AuthorDetail, AuthorOut, NoteCreate, NoteOut
from .services import AuthorNotFoundError, create_note

# An id in the path: beyond the id columns' range it is a 422, like an id that is not a number.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]
# A page of a list: at most 100 rows, starting at most at the last possible id.
Limit = Annotated[int, Query(ge=1, le=100)]
Offset = Annotated[int, Query(ge=0, le=MAX_ID)]


def authors_router(db: Database) -> APIRouter:
    """``POST /authors``, ``GET /authors`` and ``GET /authors/{author_id}``."""
    router = APIRouter()
    Session = Annotated[AsyncSession, Depends(db.session)]
    ReadSession = Annotated[AsyncSession, Depends(db.read_session)]

    @router.get("/authors")
    async def list_authors(
        session: ReadSession,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> list[AuthorDetail]:
        """Authors, oldest first, each with all their notes: two statements, however many.

        A query per author for their notes (an N+1) would be as correct and as quick with
        three authors, and no lazy-load guard sees it; test_queries.py counts it.
        """
        statement = select(Author).options(selectinload(Author.notes)).order_by(Author.id)
        authors = await session.scalars(statement.limit(limit).offset(offset))
        return [AuthorDetail.model_validate(author) for author in authors]

    @router.post("/authors", status_code=201)
    async def post_author(payload: AuthorCreate, session: Session) -> AuthorOut:
        """Create an author."""
        author = Author(name=payload.name)
        session.add(author)
        await session.flush()  # assigns author.id
        return AuthorOut.model_validate(author)

    @router.get("/authors/{author_id}")
    async def get_author(author_id: IdPath, session: ReadSession) -> AuthorDetail:
        """An author with all their notes."""
        # selectinload: one more query, `WHERE author_id IN (...)`, for the collection.
        statement = select(Author).where(Author.id == author_id).options(selectinload(Author.notes))
        author = await session.scalar(statement)
        if author is None:
            raise HTTPException(404, f"There is no author with id {author_id}.")
        return AuthorDetail.model_validate(author)

    return router


def notes_router(db: Database) -> APIRouter:
    """``POST /notes``, ``GET /notes``, ``GET /notes/{note_id}`` and ``DELETE`` of one."""
    router = APIRouter()
    Session = Annotated[AsyncSession, Depends(db.session)]
    ReadSession = Annotated[AsyncSession, Depends(db.read_session)]

    # The endpoint takes no session itself: asking for db.session in `dependencies` is what
    # makes the request a unit of work, and create_note() finds it with db.current_session().
    @router.post("/notes", status_code=201, dependencies=[Depends(db.session)])
    async def post_note(payload: NoteCreate) -> NoteOut:
        """Create a note; 404 if its author does not exist (and nothing is stored)."""
        try:
            note = await create_note(
                db, author_id=payload.author_id, title=payload.title, body=payload.body
            )
        except AuthorNotFoundError as error:
            # Raising rolls the request's transaction back.
            raise HTTPException(404, str(error)) from error
        return NoteOut.model_validate(note)

    @router.get("/notes")
    async def list_notes(
        session: ReadSession,
        limit: Limit = 50,
        offset: Offset = 0,
    ) -> list[NoteOut]:
        """Notes, oldest first, each with its author."""
        # joinedload: the author comes in the same query, one row per note (many-to-one).
        statement = select(Note).options(joinedload(Note.author)).order_by(Note.id)
        notes = await session.scalars(statement.limit(limit).offset(offset))
        return [NoteOut.model_validate(note) for note in notes]

    @router.get("/notes/{note_id}")
    async def get_note(note_id: IdPath, session: ReadSession) -> NoteOut:
        """One note with its author."""
        note = await session.get(Note, note_id, options=[joinedload(Note.author)])
        if note is None:
            raise HTTPException(404, f"There is no note with id {note_id}.")
        return NoteOut.model_validate(note)

    @router.delete("/notes/{note_id}", status_code=204)
    async def delete_note(note_id: IdPath, session: Session) -> None:
        """Delete a note."""
        note = await session.get(Note, note_id)
        if note is None:
            raise HTTPException(404, f"There is no note with id {note_id}.")
        await session.delete(note)

    return router
