"""Tests of the notes service, through HTTP and dbscope's public API only.

dbscope's pytest plugin runs each test in one transaction that is rolled back at its end:
``dbscope_client`` talks to the app, inside its lifespan, and ``dbscope_session`` reads and
writes beside it in that same transaction. conftest.py tells the plugin which app, Database
and tables, and runs every test on a SQLite file and on PostgreSQL.
"""

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import InvalidRequestError, MissingGreenlet
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import NoSessionError

from .app import db
from .models import Author, Note
from .services import AuthorNotFoundError, create_note

pytestmark = pytest.mark.anyio


async def add_author(client: httpx.AsyncClient, name: str) -> int:
    response = await client.post("/authors", json={"name": name})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def add_note(client: httpx.AsyncClient, author_id: int, title: str) -> int:
    response = await client.post("/notes", json={"author_id": author_id, "title": title})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def count_notes(session: AsyncSession) -> int:
    return (await session.scalar(select(func.count()).select_from(Note))) or 0


async def test_listed_notes_carry_their_authors_name(dbscope_client: httpx.AsyncClient) -> None:
    """GET /notes loads each note's author eagerly, so no lazy load is ever attempted."""
    ada = await add_author(dbscope_client, "Ada")
    grace = await add_author(dbscope_client, "Grace")
    await add_note(dbscope_client, ada, "engines")
    await add_note(dbscope_client, grace, "compilers")

    response = await dbscope_client.get("/notes")

    assert response.status_code == 200, response.text
    assert [(n["title"], n["author"]["name"]) for n in response.json()] == [
        ("engines", "Ada"),
        ("compilers", "Grace"),
    ]


async def test_a_created_note_is_returned_with_its_author_and_timestamp(
    dbscope_client: httpx.AsyncClient,
) -> None:
    """POST /notes answers with the author and the server-generated created_at, without SQL."""
    ada = await add_author(dbscope_client, "Ada")

    response = await dbscope_client.post(
        "/notes", json={"author_id": ada, "title": "t", "body": "b"}
    )

    assert response.status_code == 201, response.text
    note = response.json()
    assert note["author"] == {"id": ada, "name": "Ada"}
    assert note["created_at"]
    assert (await dbscope_client.get(f"/notes/{note['id']}")).json() == note


async def test_an_author_is_returned_with_their_notes(dbscope_client: httpx.AsyncClient) -> None:
    """GET /authors/{id} includes the author's notes, loaded with selectinload."""
    ada = await add_author(dbscope_client, "Ada")
    grace = await add_author(dbscope_client, "Grace")
    first = await add_note(dbscope_client, ada, "first")
    await add_note(dbscope_client, grace, "not Ada's")
    second = await add_note(dbscope_client, ada, "second")

    response = await dbscope_client.get(f"/authors/{ada}")

    assert response.status_code == 200, response.text
    author = response.json()
    assert author["name"] == "Ada"
    assert [(n["id"], n["title"]) for n in author["notes"]] == [
        (first, "first"),
        (second, "second"),
    ]


async def test_a_note_for_a_missing_author_is_404_and_stores_nothing(
    dbscope_client: httpx.AsyncClient, dbscope_session: AsyncSession
) -> None:
    """POST /notes with an unknown author_id answers 404 and leaves no row behind."""
    response = await dbscope_client.post("/notes", json={"author_id": 999, "title": "orphan"})

    assert response.status_code == 404
    assert "999" in response.json()["detail"]
    assert await count_notes(dbscope_session) == 0


async def test_rows_the_test_writes_are_the_apps_to_read(
    dbscope_client: httpx.AsyncClient, dbscope_session: AsyncSession
) -> None:
    """An author added with the test's session is there for the endpoints, in one transaction."""
    author = Author(name="Grace")
    dbscope_session.add(author)
    await dbscope_session.commit()

    response = await dbscope_client.post("/notes", json={"author_id": author.id, "title": "t"})

    assert response.status_code == 201, response.text
    assert response.json()["author"] == {"id": author.id, "name": "Grace"}
    assert await count_notes(dbscope_session) == 1


async def test_a_deleted_note_is_gone(
    dbscope_client: httpx.AsyncClient, dbscope_session: AsyncSession
) -> None:
    """DELETE /notes/{id} answers 204; the note is then 404 and no longer listed."""
    ada = await add_author(dbscope_client, "Ada")
    note = await add_note(dbscope_client, ada, "short-lived")

    deleted = await dbscope_client.delete(f"/notes/{note}")

    assert deleted.status_code == 204
    assert (await dbscope_client.get(f"/notes/{note}")).status_code == 404
    assert (await dbscope_client.get("/notes")).json() == []
    assert (await dbscope_client.delete(f"/notes/{note}")).status_code == 404
    assert await count_notes(dbscope_session) == 0


async def test_missing_authors_and_notes_are_404(dbscope_client: httpx.AsyncClient) -> None:
    """Unknown ids answer 404, not 500."""
    assert (await dbscope_client.get("/authors/1")).status_code == 404
    assert (await dbscope_client.get("/notes/1")).status_code == 404


async def test_readyz_asks_the_test_database(dbscope_client: httpx.AsyncClient) -> None:
    """GET /readyz passes: the database answered and is at the migrations' head; bound to the
    test's transaction, the app's units wait in no pool, so there is no pool check."""
    response = await dbscope_client.get("/readyz")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/health+json"
    body = response.json()
    assert body["status"] == "pass"
    assert list(body["checks"]) == ["database:responseTime", "database:migrations"]


async def test_livez_answers_without_the_database(dbscope_client: httpx.AsyncClient) -> None:
    """GET /livez answers 200 pass, whatever the database does."""
    response = await dbscope_client.get("/livez")

    assert (response.status_code, response.json()) == (200, {"status": "pass"})


async def test_an_unloaded_relationship_raises_instead_of_lazy_loading(
    dbscope_client: httpx.AsyncClient,
) -> None:
    """lazy="raise" turns a forgotten eager load into an error naming the relationship."""
    ada = await add_author(dbscope_client, "Ada")
    note_id = await add_note(dbscope_client, ada, "t")

    async with db.transaction() as session:
        note = await session.get(Note, note_id)
        author = await session.get(Author, ada)
        assert note is not None
        assert author is not None
        with pytest.raises(InvalidRequestError, match=r"'Note\.author' is not available") as info:
            _ = note.author
        assert not isinstance(info.value, MissingGreenlet)
        with pytest.raises(InvalidRequestError, match=r"'Author\.notes' is not available"):
            _ = author.notes


async def test_the_service_runs_in_a_script_transaction(
    dbscope_client: httpx.AsyncClient,
) -> None:
    """create_note() uses db.current_session(), so it works in db.transaction() as well."""
    ada = await add_author(dbscope_client, "Ada")

    async with db.transaction():
        note = await create_note(db, author_id=ada, title="from a script")

    listed = (await dbscope_client.get("/notes")).json()
    assert [(n["id"], n["author"]["name"]) for n in listed] == [(note.id, "Ada")]


async def test_the_service_rolls_back_with_its_transaction(
    dbscope_client: httpx.AsyncClient, dbscope_session: AsyncSession
) -> None:
    """An exception out of the transaction block discards what the service added."""
    ada = await add_author(dbscope_client, "Ada")

    async def good_then_bad() -> None:
        async with db.transaction():
            await create_note(db, author_id=ada, title="kept?")
            await create_note(db, author_id=ada + 1, title="no such author")

    with pytest.raises(AuthorNotFoundError):
        await good_then_bad()

    assert await count_notes(dbscope_session) == 0


async def test_the_service_outside_a_unit_of_work_raises_no_session() -> None:
    """Called with no request or transaction active, create_note() fails with NoSessionError."""
    with pytest.raises(NoSessionError):
        await create_note(db, author_id=1, title="nowhere")
