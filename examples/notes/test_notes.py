"""Tests of the notes service, through HTTP and dbscope's public API only.

Each test builds its own app with ``create_app()`` on a SQLite file of its own, configured the
way the service is: ``DATABASE_URL`` in the environment, read by ``Database.from_env()``. One
test runs the whole story on PostgreSQL, through asyncpg and psycopg.
"""

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidRequestError, MissingGreenlet

from dbscope import Database, DatabaseSettings, NoSessionError

from .app import create_app, database_from_env
from .models import Author, Base, Note
from .services import AuthorNotFoundError, create_note

pytestmark = pytest.mark.anyio

POSTGRES_URL = os.environ.get(
    "DBSCOPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


def configure(monkeypatch: pytest.MonkeyPatch, url: str) -> Database:
    """Point DATABASE_URL at ``url`` (and nothing else at anything), then build the Database."""
    for name in DatabaseSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("DATABASE_URL", url)
    return database_from_env()


@pytest.fixture
def db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Database:
    """The Database of a test's own SQLite file, configured through DATABASE_URL."""
    return configure(monkeypatch, f"sqlite+aiosqlite:///{tmp_path / 'notes.db'}")


@pytest.fixture
async def client(db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for an app on ``db``, inside the app's lifespan (tables created)."""
    app = create_app(db)
    async with app.router.lifespan_context(app), http_client(app) as client:
        yield client


def http_client(app: FastAPI) -> httpx.AsyncClient:
    # ASGITransport does not run the lifespan: the fixtures enter it themselves.
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://notes")


async def add_author(client: httpx.AsyncClient, name: str) -> int:
    response = await client.post("/authors", json={"name": name})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def add_note(client: httpx.AsyncClient, author_id: int, title: str) -> int:
    response = await client.post("/notes", json={"author_id": author_id, "title": title})
    assert response.status_code == 201, response.text
    return int(response.json()["id"])


async def count_notes(db: Database) -> int:
    async with db.transaction() as session:
        return (await session.scalar(select(func.count()).select_from(Note))) or 0


async def test_listed_notes_carry_their_authors_name(client: httpx.AsyncClient) -> None:
    """GET /notes loads each note's author eagerly, so no lazy load is ever attempted."""
    ada = await add_author(client, "Ada")
    grace = await add_author(client, "Grace")
    await add_note(client, ada, "engines")
    await add_note(client, grace, "compilers")

    response = await client.get("/notes")

    assert response.status_code == 200, response.text
    assert [(n["title"], n["author"]["name"]) for n in response.json()] == [
        ("engines", "Ada"),
        ("compilers", "Grace"),
    ]


async def test_a_created_note_is_returned_with_its_author_and_timestamp(
    client: httpx.AsyncClient,
) -> None:
    """POST /notes answers with the author and the server-generated created_at, without SQL."""
    ada = await add_author(client, "Ada")

    response = await client.post("/notes", json={"author_id": ada, "title": "t", "body": "b"})

    assert response.status_code == 201, response.text
    note = response.json()
    assert note["author"] == {"id": ada, "name": "Ada"}
    assert note["created_at"]
    assert (await client.get(f"/notes/{note['id']}")).json() == note


async def test_an_author_is_returned_with_their_notes(client: httpx.AsyncClient) -> None:
    """GET /authors/{id} includes the author's notes, loaded with selectinload."""
    ada = await add_author(client, "Ada")
    grace = await add_author(client, "Grace")
    first = await add_note(client, ada, "first")
    await add_note(client, grace, "not Ada's")
    second = await add_note(client, ada, "second")

    response = await client.get(f"/authors/{ada}")

    assert response.status_code == 200, response.text
    author = response.json()
    assert author["name"] == "Ada"
    assert [(n["id"], n["title"]) for n in author["notes"]] == [
        (first, "first"),
        (second, "second"),
    ]


async def test_a_note_for_a_missing_author_is_404_and_stores_nothing(
    client: httpx.AsyncClient, db: Database
) -> None:
    """POST /notes with an unknown author_id answers 404 and leaves no row behind."""
    response = await client.post("/notes", json={"author_id": 999, "title": "orphan"})

    assert response.status_code == 404
    assert "999" in response.json()["detail"]
    assert await count_notes(db) == 0


async def test_a_deleted_note_is_gone(client: httpx.AsyncClient, db: Database) -> None:
    """DELETE /notes/{id} answers 204; the note is then 404 and no longer listed."""
    ada = await add_author(client, "Ada")
    note = await add_note(client, ada, "short-lived")

    deleted = await client.delete(f"/notes/{note}")

    assert deleted.status_code == 204
    assert (await client.get(f"/notes/{note}")).status_code == 404
    assert (await client.get("/notes")).json() == []
    assert (await client.delete(f"/notes/{note}")).status_code == 404
    assert await count_notes(db) == 0


async def test_missing_authors_and_notes_are_404(client: httpx.AsyncClient) -> None:
    """Unknown ids answer 404, not 500."""
    assert (await client.get("/authors/1")).status_code == 404
    assert (await client.get("/notes/1")).status_code == 404


async def test_health_runs_a_query(client: httpx.AsyncClient) -> None:
    """GET /health answers 200 and names the database it asked."""
    response = await client.get("/health")

    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "sqlite"}


async def test_an_unloaded_relationship_raises_instead_of_lazy_loading(
    client: httpx.AsyncClient, db: Database
) -> None:
    """lazy="raise" turns a forgotten eager load into an error naming the relationship."""
    ada = await add_author(client, "Ada")
    note_id = await add_note(client, ada, "t")

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
    client: httpx.AsyncClient, db: Database
) -> None:
    """create_note() uses db.current_session(), so it works in db.transaction() as well."""
    ada = await add_author(client, "Ada")

    async with db.transaction():
        note = await create_note(db, author_id=ada, title="from a script")

    listed = (await client.get("/notes")).json()
    assert [(n["id"], n["author"]["name"]) for n in listed] == [(note.id, "Ada")]


async def test_the_service_rolls_back_with_its_transaction(
    client: httpx.AsyncClient, db: Database
) -> None:
    """An exception out of the transaction block discards what the service added."""
    ada = await add_author(client, "Ada")

    async def good_then_bad() -> None:
        async with db.transaction():
            await create_note(db, author_id=ada, title="kept?")
            await create_note(db, author_id=ada + 1, title="no such author")

    with pytest.raises(AuthorNotFoundError):
        await good_then_bad()

    assert await count_notes(db) == 0


async def test_the_service_outside_a_unit_of_work_raises_no_session(
    client: httpx.AsyncClient, db: Database
) -> None:
    """Called with no request or transaction active, create_note() fails with NoSessionError."""
    with pytest.raises(NoSessionError):
        await create_note(db, author_id=1, title="nowhere")


def require_postgres(url: str) -> None:
    """Skip when the server is down; fail instead under CI=true."""
    parsed = make_url(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5432
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError:
        message = f"No PostgreSQL server at {host}:{port} (set DBSCOPE_TEST_POSTGRES_URL)."
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


async def drop_tables(db: Database) -> None:
    async with db.transaction() as session:
        connection = await session.connection()
        await connection.run_sync(Base.metadata.drop_all)


@pytest.mark.parametrize("driver", ["asyncpg", "psycopg"])
async def test_the_whole_story_on_postgresql(driver: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Authors, notes, eager loads, 404 and delete behave the same on PostgreSQL."""
    require_postgres(POSTGRES_URL)
    url = make_url(POSTGRES_URL).set(drivername=f"postgresql+{driver}")
    db = configure(monkeypatch, url.render_as_string(hide_password=False))
    async with db:  # a clean slate, should an earlier run have been interrupted
        await drop_tables(db)
    app = create_app(db)
    async with app.router.lifespan_context(app), http_client(app) as client:
        try:
            ada = await add_author(client, "Ada")
            first = await add_note(client, ada, "first")
            second = await add_note(client, ada, "second")
            missing = await client.post("/notes", json={"author_id": ada + 1, "title": "x"})
            deleted = await client.delete(f"/notes/{first}")
            notes = (await client.get("/notes")).json()
            author = (await client.get(f"/authors/{ada}")).json()
            health = (await client.get("/health")).json()
        finally:
            await drop_tables(db)

    assert missing.status_code == 404
    assert deleted.status_code == 204
    assert [(n["id"], n["author"]["name"]) for n in notes] == [(second, "Ada")]
    assert [n["title"] for n in author["notes"]] == ["second"]
    assert health == {"status": "ok", "database": "postgresql"}
