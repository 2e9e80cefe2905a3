"""Inputs the database cannot store are refused with a 422; timestamps carry their time zone.

Each of these inputs once answered 500 on one database or another: ids and offsets beyond
64 bits (SQLite) or 32 bits (PostgreSQL), a NUL character (PostgreSQL), a string that is not
valid Unicode; and SQLite's timestamps were shown without their time zone. Like every test
of the example they run on SQLite and on PostgreSQL.
"""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.asyncio import AsyncSession

from .models import Author, Note
from .schemas import MAX_BODY_LENGTH, MAX_ID

pytestmark = pytest.mark.anyio

BEYOND_INT32 = 2**31
BEYOND_INT64 = 2**63


def note(**fields: Any) -> dict[str, Any]:
    """A valid body for POST /notes, but for ``fields``."""
    return {"author_id": 1, "title": "t", "body": "", **fields}


@pytest.mark.parametrize(
    ("method", "url", "body", "field"),
    [
        ("GET", f"/notes/{BEYOND_INT64}", None, "note_id"),
        ("GET", f"/notes/{BEYOND_INT32}", None, "note_id"),
        ("DELETE", f"/notes/{BEYOND_INT32}", None, "note_id"),
        ("GET", f"/authors/{BEYOND_INT32}", None, "author_id"),
        ("GET", f"/notes?offset={BEYOND_INT64}", None, "offset"),
        ("GET", f"/notes?offset={BEYOND_INT32}", None, "offset"),
        ("GET", f"/notes?limit={BEYOND_INT64}", None, "limit"),
        ("POST", "/notes", note(author_id=BEYOND_INT32), "author_id"),
        ("POST", "/notes", note(author_id=BEYOND_INT64), "author_id"),
        ("POST", "/authors", {"name": "Ada\x00"}, "name"),
        ("POST", "/notes", note(title="\x00"), "title"),
        ("POST", "/notes", note(body="before\x00after"), "body"),
        ("POST", "/notes", note(body="x" * (MAX_BODY_LENGTH + 1)), "body"),
        ("POST", "/notes", note(body="x" * 20_000_000), "body"),
    ],
    ids=[
        "note id beyond int64",
        "note id beyond int32",
        "deleted note id beyond int32",
        "author id beyond int32",
        "offset beyond int64",
        "offset beyond int32",
        "limit beyond int64",
        "author_id beyond int32",
        "author_id beyond int64",
        "NUL in a name",
        "NUL in a title",
        "NUL in a body",
        "body one character too long",
        "body of 20 MB",
    ],
)
async def test_an_input_out_of_bounds_is_422_naming_the_field(
    dbscope_client: httpx.AsyncClient,
    method: str,
    url: str,
    body: dict[str, Any] | None,
    field: str,
) -> None:
    """Ids, offsets, limits and strings beyond their bounds are 422, before any SQL runs."""
    response = await dbscope_client.request(method, url, json=body)

    assert response.status_code == 422, response.text[:500]
    assert [error["loc"][-1] for error in response.json()["detail"]] == [field]


async def test_a_string_that_is_not_unicode_is_422(dbscope_client: httpx.AsyncClient) -> None:
    """A lone surrogate (valid JSON, but no text a database can store) is a 422."""
    response = await dbscope_client.post(
        "/authors", content=b'{"name": "\\ud800"}', headers={"content-type": "application/json"}
    )

    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "name"]


async def test_the_largest_values_are_accepted(dbscope_client: httpx.AsyncClient) -> None:
    """The bounds are the databases' own: the largest id is a 404, the longest note stored."""
    author = (await dbscope_client.post("/authors", json={"name": "Ada"})).json()
    longest = note(author_id=author["id"], title="é" * 200, body="é" * MAX_BODY_LENGTH)

    created = await dbscope_client.post("/notes", json=longest)

    assert created.status_code == 201, created.text[:500]
    assert (await dbscope_client.get(f"/notes/{MAX_ID}")).status_code == 404
    assert (await dbscope_client.get(f"/authors/{MAX_ID}")).status_code == 404
    assert (await dbscope_client.get(f"/notes?offset={MAX_ID}")).json() == []
    assert (await dbscope_client.post("/notes", json=note(author_id=MAX_ID))).status_code == 404


async def test_timestamps_carry_their_time_zone(dbscope_client: httpx.AsyncClient) -> None:
    """created_at is UTC with its offset, on SQLite too, whether just written or read back."""
    author = (await dbscope_client.post("/authors", json={"name": "Ada"})).json()
    created = (await dbscope_client.post("/notes", json=note(author_id=author["id"]))).json()

    shown = [
        created["created_at"],
        (await dbscope_client.get(f"/notes/{created['id']}")).json()["created_at"],
        (await dbscope_client.get("/notes")).json()[0]["created_at"],
        (await dbscope_client.get(f"/authors/{author['id']}")).json()["notes"][0]["created_at"],
    ]

    for text in shown:
        moment = datetime.fromisoformat(text)
        assert moment.utcoffset() == timedelta(0), text
        # UTC indeed, not the server's local time labelled UTC.
        assert abs(datetime.now(UTC) - moment) < timedelta(minutes=5), text


async def test_a_time_written_with_an_offset_is_stored_as_the_same_instant(
    dbscope_client: httpx.AsyncClient, dbscope_session: AsyncSession
) -> None:
    """A created_at set in UTC+2 reads back two hours earlier in UTC; a naive one is refused."""
    author = Author(name="Ada")
    written = Note(
        title="t",
        author=author,
        created_at=datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
    )
    dbscope_session.add(written)
    await dbscope_session.commit()

    shown = (await dbscope_client.get(f"/notes/{written.id}")).json()["created_at"]

    assert shown == "2024-01-01T10:00:00Z"
    dbscope_session.add(Note(title="naive", author=author, created_at=datetime(2024, 1, 1)))
    with pytest.raises(StatementError, match="has no time zone"):
        await dbscope_session.flush()
