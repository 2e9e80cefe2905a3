"""The notes service: authors and their notes over HTTP, on dbscope's public API only.

Run it from the repository root with ``uvicorn examples.notes.app:app`` or
``python -m examples.notes``. It uses ``DATABASE_URL`` (read by ``Database.from_env()``) when
set, and otherwise a SQLite file, ``notes.db``, in the current directory.

The application is built by :func:`create_app` from a :class:`dbscope.Database`; ``app``
below is the one uvicorn serves, and the one the tests use: dbscope's pytest plugin runs
its ``db`` in each test's transaction, on the test database (see conftest.py).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at
# run time, and they name `Session`, an alias local to create_app().
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Final

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from dbscope import Database

from .models import Author, Base, Note
from .schemas import MAX_ID, AuthorCreate, AuthorDetail, AuthorOut, Health, NoteCreate, NoteOut
from .services import AuthorNotFoundError, create_note

DEFAULT_URL: Final = "sqlite+aiosqlite:///notes.db"

# An id in the path: beyond the id columns' range it is a 422, like an id that is not a number.
IdPath = Annotated[int, Path(ge=1, le=MAX_ID)]


def database_from_env() -> Database:
    """The database the environment names (``DATABASE_URL`` or ``POSTGRES_*``), else the
    SQLite file ``notes.db``.

    ``from_env()`` also reads ``POOL_SIZE``, ``POOL_TIMEOUT`` and the other settings; see
    docs/configuration.md.
    """
    return Database.from_env(default_url=DEFAULT_URL)


async def create_tables(db: Database) -> None:
    """Create the example's tables if they do not exist yet.

    Runs in a dbscope transaction rather than on ``db.engine`` directly so that a configured
    ``POSTGRES_SCHEMA`` applies to the DDL exactly as it does to requests.
    """
    async with db.transaction() as session:
        connection = await session.connection()
        await connection.run_sync(Base.metadata.create_all)


async def refuse_invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming each invalid field, as FastAPI's own handler does, without the input.

    FastAPI's handler echoes each invalid value back. That can be 20 MB of note, or a string
    with a lone surrogate (valid JSON, not valid Unicode) that no UTF-8 response can carry:
    rendering the 422 would then fail with a 500. The client sent the input; it has it.
    """
    detail = [{key: value for key, value in e.items() if key != "input"} for e in error.errors()]
    return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)


def create_app(db: Database) -> FastAPI:
    """Build the notes service on ``db``; the app connects and disposes it in its lifespan."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # dbscope's lifespan inside the app's own: connected from here until shutdown.
        async with db.lifespan(app):
            await create_tables(db)
            yield

    app = FastAPI(
        title="Notes (dbscope example)",
        lifespan=lifespan,
        exception_handlers={RequestValidationError: refuse_invalid_request},
    )
    # One session per request, committed after the endpoint returns and before the response.
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.post("/authors", status_code=201)
    async def post_author(payload: AuthorCreate, session: Session) -> AuthorOut:
        """Create an author."""
        author = Author(name=payload.name)
        session.add(author)
        await session.flush()  # assigns author.id
        return AuthorOut.model_validate(author)

    @app.get("/authors/{author_id}")
    async def get_author(author_id: IdPath, session: Session) -> AuthorDetail:
        """An author with all their notes."""
        # selectinload: one more query, `WHERE author_id IN (...)`, for the collection.
        statement = select(Author).where(Author.id == author_id).options(selectinload(Author.notes))
        author = await session.scalar(statement)
        if author is None:
            raise HTTPException(404, f"There is no author with id {author_id}.")
        return AuthorDetail.model_validate(author)

    # The endpoint takes no session itself: asking for db.session in `dependencies` is what
    # makes the request a unit of work, and create_note() finds it with db.current_session().
    @app.post("/notes", status_code=201, dependencies=[Depends(db.session)])
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

    @app.get("/notes")
    async def list_notes(
        session: Session,
        limit: Annotated[int, Query(ge=1, le=100)] = 50,
        offset: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    ) -> list[NoteOut]:
        """Notes, oldest first, each with its author."""
        # joinedload: the author comes in the same query, one row per note (many-to-one).
        statement = (
            select(Note)
            .options(joinedload(Note.author))
            .order_by(Note.id)
            .limit(limit)
            .offset(offset)
        )
        notes = await session.scalars(statement)
        return [NoteOut.model_validate(note) for note in notes]

    @app.get("/notes/{note_id}")
    async def get_note(note_id: IdPath, session: Session) -> NoteOut:
        """One note with its author."""
        note = await session.get(Note, note_id, options=[joinedload(Note.author)])
        if note is None:
            raise HTTPException(404, f"There is no note with id {note_id}.")
        return NoteOut.model_validate(note)

    @app.delete("/notes/{note_id}", status_code=204)
    async def delete_note(note_id: IdPath, session: Session) -> None:
        """Delete a note."""
        note = await session.get(Note, note_id)
        if note is None:
            raise HTTPException(404, f"There is no note with id {note_id}.")
        await session.delete(note)

    @app.get("/health")
    async def health(session: Session) -> Health:
        """Answer 200 when the database answers; dbscope turns an outage into a 503."""
        await session.execute(text("SELECT 1"))
        # The database of the connection that answered (in tests, the test database).
        return Health(status="ok", database=session.get_bind().dialect.name)

    return app


db = database_from_env()
app = create_app(db)
