"""The request and response bodies, as pydantic models.

Responses are built from ORM objects with ``from_attributes``; each one names exactly the
relationships its endpoint loads eagerly, so reading them never needs SQL.
"""

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


class AuthorCreate(BaseModel):
    """The body of ``POST /authors``."""

    name: str = Field(min_length=1, max_length=100)


class NoteCreate(BaseModel):
    """The body of ``POST /notes``."""

    author_id: int
    title: str = Field(min_length=1, max_length=200)
    body: str = ""


class AuthorOut(BaseModel):
    """An author without their notes."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str


class NoteSummary(BaseModel):
    """A note without its author, as listed under the author."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str
    body: str
    created_at: datetime


class NoteOut(NoteSummary):
    """A note with its author: needs ``Note.author`` loaded."""

    author: AuthorOut


class AuthorDetail(AuthorOut):
    """An author with their notes: needs ``Author.notes`` loaded."""

    notes: list[NoteSummary]


class Health(BaseModel):
    """The body of ``GET /health``."""

    status: str
    database: str
