"""The ORM models: an author has many notes, a note has one author.

Both relationships are ``lazy="raise"``. Under asyncio an attribute access cannot run SQL, so
a relationship that was not loaded up front would otherwise fail with ``MissingGreenlet`` (or
worse, load one row at a time where a sync app would quietly do N+1 queries). With
``lazy="raise"``, forgetting ``selectinload``/``joinedload`` is an immediate error that names
the relationship: ``'Note.author' is not available due to lazy='raise'``.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    """The declarative base of the example; its metadata holds the example's tables only."""


class Author(Base):
    """Someone who writes notes."""

    # The `example_` prefix keeps these tables apart from any other test's in a shared database.
    __tablename__ = "example_authors"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))

    notes: Mapped[list[Note]] = relationship(
        back_populates="author", lazy="raise", order_by="Note.id"
    )


class Note(Base):
    """A short text written by one author."""

    __tablename__ = "example_notes"
    # Fetch server-generated columns (created_at) with RETURNING during the INSERT: reading
    # them afterwards would otherwise be a refresh, that is SQL on attribute access.
    __mapper_args__ = {"eager_defaults": True}  # noqa: RUF012 - SQLAlchemy's own convention

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(200))
    body: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    author_id: Mapped[int] = mapped_column(ForeignKey("example_authors.id"), index=True)

    author: Mapped[Author] = relationship(back_populates="notes", lazy="raise")
