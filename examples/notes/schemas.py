"""The request and response bodies, as pydantic models.

Every input is bounded, so that a value the database cannot store is refused with a 422 that
names the field, before any SQL runs, instead of failing in the driver with a 500: ids fit the
id columns, strings have a maximum length and hold no NUL character. app.py bounds the path
and query parameters with the same limits.

Responses are built from ORM objects with ``from_attributes``; each one names exactly the
relationships its endpoint loads eagerly, so reading them never needs SQL.
"""

from typing import Annotated, Final

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

# The id columns are `integer`, 32 bits on PostgreSQL and MariaDB/MySQL. A larger id names no
# row, and the drivers fail on it instead of finding none (asyncpg beyond 32 bits, SQLite
# beyond 64). Offsets share the bound (app.py): no page starts past the last possible id.
MAX_ID: Final = 2**31 - 1
# `max_length` refuses a longer note only after the server has read and parsed the whole
# request. A production deployment also caps the request body before it reaches the app:
# `client_max_body_size 64k;` in nginx, or the same limit at the load balancer.
MAX_BODY_LENGTH: Final = 10_000
# PostgreSQL's text types cannot hold a NUL character; no database needs one in a note.
NO_NUL: Final = r"^[^\x00]*$"

Id = Annotated[int, Field(ge=1, le=MAX_ID)]


class AuthorCreate(BaseModel):
    """The body of ``POST /authors``."""

    name: str = Field(min_length=1, max_length=100, pattern=NO_NUL)


class NoteCreate(BaseModel):
    """The body of ``POST /notes``."""

    author_id: Id
    title: str = Field(min_length=1, max_length=200, pattern=NO_NUL)
    body: str = Field(default="", max_length=MAX_BODY_LENGTH, pattern=NO_NUL)


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
    # Always with its time zone (UTC, models.UtcDateTime), as OpenAPI's date-time requires.
    created_at: AwareDatetime


class NoteOut(NoteSummary):
    """A note with its author: needs ``Note.author`` loaded."""

    author: AuthorOut


class AuthorDetail(AuthorOut):
    """An author with their notes: needs ``Author.notes`` loaded."""

    notes: list[NoteSummary]
