"""Lazy loads fail loudly, naming the attribute: LazyLoadError instead of MissingGreenlet.

By default a lazy load from plain async code (which SQLAlchemy would fail with
MissingGreenlet) raises LazyLoadError, while the loads that can run (``awaitable_attrs``,
``run_sync``) still do. With ``raise_on_lazy_load=True`` (or ``RAISE_ON_LAZY_LOAD``) every lazy
load that would run SQL is refused, eager loads and identity-map hits are not. In FastAPI, a
response built from an unloaded relationship must fail with LazyLoadError, not with a puzzling
error and not with a wrong answer; a pure ASGI middleware records the exception behind the 500.

No ``from __future__ import annotations``: the endpoints use a ``Session`` alias built inside
a function.
"""

from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from pydantic import BaseModel, ConfigDict
from sqlalchemy import ForeignKey, String, insert, select
from sqlalchemy.exc import MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncAttrs, AsyncSession
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)
from starlette.types import ASGIApp, Receive, Scope, Send

from dbscope import Database, LazyLoadError
from tests.helpers import Tables, admin, send


class Base(AsyncAttrs, DeclarativeBase):
    """The models of this module."""


class Author(Base):
    """An author of notes."""

    __tablename__ = "ll_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    notes: Mapped[list["Note"]] = relationship(back_populates="author")


class Note(Base):
    """A note, with its author as a lazy many-to-one."""

    __tablename__ = "ll_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(40))
    author_id: Mapped[int] = mapped_column(ForeignKey("ll_authors.id"))
    author: Mapped[Author] = relationship(back_populates="notes")


class AuthorOut(BaseModel):
    """The author in a response."""

    model_config = ConfigDict(from_attributes=True)
    name: str


class NoteOut(BaseModel):
    """A note in a response, with its author."""

    model_config = ConfigDict(from_attributes=True)
    title: str
    author: AuthorOut


class NoteMaybeAuthorOut(BaseModel):
    """A note in a response whose author may be absent."""

    model_config = ConfigDict(from_attributes=True)
    title: str
    author: AuthorOut | None = None


@pytest.fixture
async def notes(database_url: str, tables: Tables) -> None:
    """The author 'ann' (id 1) with the notes 'first' (id 1) and 'second' (id 2)."""
    await tables.create_all(Base.metadata)
    async with admin(database_url) as connection:
        await connection.execute(insert(Author).values(id=1, name="ann"))
        await connection.execute(
            insert(Note),
            [
                {"id": 1, "title": "first", "author_id": 1},
                {"id": 2, "title": "second", "author_id": 1},
            ],
        )


async def get_note(session: AsyncSession) -> Note:
    """Note 1, its relationships not loaded."""
    note = await session.get(Note, 1)
    assert note is not None
    return note


async def get_author(session: AsyncSession) -> Author:
    """Author 1, its relationships not loaded."""
    author = await session.get(Author, 1)
    assert author is not None
    return author


def note_author_name(session: Any) -> str:
    """Note 1's author's name, read by plain attribute access (run in ``run_sync``)."""
    note = session.get(Note, 1)
    return str(note.author.name)


# -- the default ------------------------------------------------------------------------------


@pytest.mark.parametrize(("model", "attribute"), [(Note, "author"), (Author, "notes")])
@pytest.mark.usefixtures("notes")
async def test_an_unloaded_relationship_read_in_async_code_raises_lazy_load_error(
    db: Database, model: type[Base], attribute: str
) -> None:
    """``note.author`` (many-to-one) or ``author.notes`` (a collection) not loaded:
    LazyLoadError naming Note.author or Author.notes, not MissingGreenlet."""
    async with db.transaction() as session:
        row = await session.get(model, 1)
        with pytest.raises(LazyLoadError, match=rf"{model.__name__}\.{attribute}") as raised:
            getattr(row, attribute)
    assert not isinstance(raised.value, MissingGreenlet)


@pytest.mark.usefixtures("notes")
async def test_an_attribute_expired_by_a_rollback_raises_lazy_load_error(db: Database) -> None:
    """The docs' pattern (roll back, then answer 400 from the object) read an expired
    attribute: MissingGreenlet, and on aiosqlite a connection thrown away. Now LazyLoadError
    naming the fix, before the session takes a connection."""
    async with db.transaction() as session:
        note = await get_note(session)
        await session.rollback()
        with pytest.raises(
            LazyLoadError, match=r"Note's attributes are not loaded: expired"
        ) as raised:
            _ = note.title
        assert "session.refresh" in str(raised.value)
        await session.refresh(note)
        assert note.title == "first"
    assert db.stats().invalidated == 0


@pytest.mark.usefixtures("notes")
async def test_the_check_stays_off_the_statements_that_are_not_lazy_loads(db: Database) -> None:
    """The check is put on the session for a load from async code only, and taken off after:
    a refused load leaves no listener, so the unit's next statements build no ORMExecuteState,
    and a second unloaded read is refused again."""
    async with db.transaction() as session:
        note = await get_note(session)
        listeners = session.sync_session.dispatch.do_orm_execute
        assert not listeners
        for _ in range(2):
            with pytest.raises(LazyLoadError, match=r"Note\.author"):
                _ = note.author
            assert not listeners
        assert (await session.scalars(select(Author.name))).all() == ["ann"]


@pytest.mark.usefixtures("notes")
async def test_awaitable_attrs_still_load_a_relationship_by_default(db: Database) -> None:
    """``await note.awaitable_attrs.author`` runs the load it asks for."""
    async with db.transaction() as session:
        note = await get_note(session)
        author = await note.awaitable_attrs.author
        notes = await author.awaitable_attrs.notes
    assert author.name == "ann"
    assert sorted(n.title for n in notes) == ["first", "second"]


@pytest.mark.usefixtures("notes")
async def test_run_sync_still_loads_a_relationship_by_default(db: Database) -> None:
    """Plain attribute access inside ``session.run_sync`` lazy-loads as SQLAlchemy does."""
    async with db.transaction() as session:
        name = await session.run_sync(note_author_name)
    assert name == "ann"


# -- the switch -------------------------------------------------------------------------------


@pytest.mark.usefixtures("notes")
async def test_the_switch_refuses_a_load_through_awaitable_attrs(database_url: str) -> None:
    """raise_on_lazy_load=True: even ``awaitable_attrs`` fails, naming the attribute."""
    db = Database(database_url, raise_on_lazy_load=True)
    async with db, db.transaction() as session:
        note = await get_note(session)
        with pytest.raises(LazyLoadError, match=r"Note\.author"):
            await note.awaitable_attrs.author


@pytest.mark.usefixtures("notes")
async def test_the_switch_refuses_a_lazy_load_inside_run_sync(database_url: str) -> None:
    """raise_on_lazy_load=True: a lazy load inside ``run_sync`` fails, naming the attribute."""
    db = Database(database_url, raise_on_lazy_load=True)
    async with db, db.transaction() as session:
        with pytest.raises(LazyLoadError, match=r"Note\.author"):
            await session.run_sync(note_author_name)


@pytest.mark.usefixtures("notes")
async def test_the_switch_lets_eager_loads_run(database_url: str) -> None:
    """selectinload and joinedload asked for in the query still load under the switch."""
    db = Database(database_url, raise_on_lazy_load=True)
    async with db, db.transaction() as session:
        author = await session.scalar(
            select(Author).options(selectinload(Author.notes)).where(Author.id == 1)
        )
        note = await session.scalar(
            select(Note).options(joinedload(Note.author)).where(Note.id == 2)
        )
    assert author is not None
    assert note is not None
    assert sorted(n.title for n in author.notes) == ["first", "second"]
    assert note.author.name == "ann"


@pytest.mark.usefixtures("notes")
async def test_the_switch_lets_a_relationship_found_in_the_identity_map_through(
    database_url: str,
) -> None:
    """A many-to-one whose target is already in the session needs no SQL, so no error."""
    db = Database(database_url, raise_on_lazy_load=True)
    async with db, db.transaction() as session:
        author = await get_author(session)  # held: the identity map keeps only weak refs
        note = await get_note(session)
        found = note.author
    assert found is author


@pytest.mark.usefixtures("notes")
async def test_the_switch_can_be_turned_on_from_the_environment(
    database_url: str, clean_env: pytest.MonkeyPatch
) -> None:
    """RAISE_ON_LAZY_LOAD=true makes Database.from_env() refuse every lazy load."""
    clean_env.setenv("DATABASE_URL", database_url)
    clean_env.setenv("RAISE_ON_LAZY_LOAD", "true")
    db = Database.from_env()
    async with db, db.transaction() as session:
        note = await get_note(session)
        with pytest.raises(LazyLoadError, match=r"Note\.author"):
            await note.awaitable_attrs.author
    assert db.settings.raise_on_lazy_load is True


# -- FastAPI responses ------------------------------------------------------------------------


class KeepErrors:
    """Pure ASGI middleware: records every exception that leaves the app, then re-raises it."""

    def __init__(self, app: ASGIApp, errors: list[BaseException]) -> None:
        self.app = app
        self.errors = errors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.app(scope, receive, send)
        except Exception as error:
            self.errors.append(error)
            raise


def chain(error: BaseException) -> list[BaseException]:
    """``error`` and the errors it was raised from or during, innermost last."""
    seen: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def blames_the_lazy_load(errors: list[BaseException]) -> bool:
    """Whether the errors behind a 500 are, or name, the LazyLoadError for Note.author.

    pydantic reports an attribute that raised inside its own validation error, by text.
    """
    causes = [cause for error in errors for cause in chain(error)]
    return any(
        isinstance(cause, LazyLoadError) or "Note.author is not loaded" in str(cause)
        for cause in causes
    )


def blames_a_missing_greenlet(errors: list[BaseException]) -> bool:
    """Whether the errors behind a 500 are, or name, SQLAlchemy's MissingGreenlet."""
    causes = [cause for error in errors for cause in chain(error)]
    return any(
        isinstance(cause, MissingGreenlet) or "greenlet_spawn has not been called" in str(cause)
        for cause in causes
    )


def build_app(db: Database) -> FastAPI:
    """Endpoints returning note 1 through response models; ``app.state.errors`` collects."""
    app = FastAPI()
    app.state.errors = []
    app.add_middleware(KeepErrors, errors=app.state.errors)
    Session = Annotated[AsyncSession, Depends(db.session)]

    @app.get("/unloaded", response_model=NoteOut)
    async def unloaded(session: Session) -> Any:
        return await get_note(session)

    @app.get("/unloaded-optional", response_model=NoteMaybeAuthorOut)
    async def unloaded_optional(session: Session) -> Any:
        return await get_note(session)

    @app.get("/loaded", response_model=NoteOut)
    async def loaded(session: Session) -> Any:
        return await session.scalar(
            select(Note).options(joinedload(Note.author)).where(Note.id == 1)
        )

    return app


@pytest.mark.parametrize("path", ["/unloaded", "/unloaded-optional"])
@pytest.mark.usefixtures("notes")
async def test_a_response_built_from_an_unloaded_relationship_fails_with_lazy_load_error(
    db: Database, path: str
) -> None:
    """A response model reading ``note.author``: a 500 that names the LazyLoadError. An
    optional ``author`` field fails the same way; it is never answered as null."""
    app = build_app(db)
    response = await send(app, f"GET {path}")
    assert response.status_code == 500, response.text
    assert not blames_a_missing_greenlet(app.state.errors)
    assert blames_the_lazy_load(app.state.errors), app.state.errors


@pytest.mark.usefixtures("notes")
async def test_a_response_with_the_relationship_loaded_answers_200(db: Database) -> None:
    """The control: the same response model with ``joinedload`` gives the note and author."""
    app = build_app(db)
    response = await send(app, "GET /loaded")
    assert response.status_code == 200, response.text
    assert response.json() == {"title": "first", "author": {"name": "ann"}}
    assert app.state.errors == []
