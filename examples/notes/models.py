"""The ORM models: an author has many notes, a note has one author.

Both relationships are ``lazy="raise"``. Under asyncio an attribute access cannot run SQL, so
a relationship that was not loaded up front would otherwise fail with ``MissingGreenlet`` (or
worse, load one row at a time where a sync app would quietly do N+1 queries). With
``lazy="raise"``, forgetting ``selectinload``/``joinedload`` is an immediate error that names
the relationship: ``'Note.author' is not available due to lazy='raise'``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Dialect, ForeignKey, String, Text, TypeDecorator, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class UtcDateTime(TypeDecorator[datetime]):
    """A point in time, read back as a timezone-aware datetime in UTC on every database.

    PostgreSQL's ``timestamp with time zone`` returns aware datetimes, in the session's time
    zone. SQLite has no such type: it stores the text without an offset and returns naive
    datetimes, which in this app are UTC, since SQLite's ``CURRENT_TIMESTAMP`` (the
    ``server_default`` below) is UTC. Without this type the API would show SQLite's
    timestamps without a time zone, and clients would read them as their own local time.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Refuse a naive datetime: which time zone it means is a guess."""
        if value is not None and value.tzinfo is None:
            message = f"{value!r} has no time zone; pass an aware one, e.g. datetime.now(UTC)."
            raise ValueError(message)
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> datetime | None:
        """The stored time in UTC; a naive one (SQLite's) is UTC already."""
        if value is None:
            return None
        moment: datetime = value
        if moment.tzinfo is None:
            return moment.replace(tzinfo=UTC)
        return moment.astimezone(UTC)


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
    created_at: Mapped[datetime] = mapped_column(UtcDateTime(), server_default=func.now())
    author_id: Mapped[int] = mapped_column(ForeignKey("example_authors.id"), index=True)

    author: Mapped[Author] = relationship(back_populates="notes", lazy="raise")
