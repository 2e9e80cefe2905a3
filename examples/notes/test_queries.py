"""Query counts: an N+1 is caught by a test, with the same count on every driver.

``GET /authors`` lists the authors with their notes in two statements, ``selectinload``'s.
Written first with a query per author for their notes, it answers the same JSON, as quickly
with three authors, and no lazy-load guard sees it (every query is explicit); a count of
its statements does, and says which statement repeats and where it ran::

    ran 4 statements, at most 2; 3 × `SELECT ... FROM example_notes WHERE
    example_notes.author_id = ? ORDER BY example_notes.id` from examples/notes/test_queries.py:57

This module runs on SQLite, on PostgreSQL through asyncpg and through psycopg, and on
MariaDB, with the same counts on each: its ``dbscope_engine`` gives the plugin a test
database of each in turn, made by the example's migrations and dropped after the module's
tests. The rest of the example runs on SQLite and PostgreSQL (conftest.py).
"""  # noqa: RUF002 - the sign is the message's own

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from dbscope import Database, DatabaseUnavailableError, testing
from dbscope.testing import QueryCounter, QueryCountError

from .app import db
from .models import Author, Note
from .schemas import AuthorDetail, NoteSummary

pytestmark = pytest.mark.anyio

DRIVERS = ("sqlite", "asyncpg", "psycopg", "asyncmy")
POSTGRES_URL = os.environ.get(
    "DBSCOPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
MYSQL_URL = os.environ.get("DBSCOPE_TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")
ALEMBIC_INI = Path(__file__).with_name("alembic.ini")


def a_query_per_author(database: Database) -> FastAPI:
    """The app with ``GET /authors`` as first written: the authors, then each one's notes."""
    app = FastAPI(lifespan=database.lifespan)
    Session = Annotated[AsyncSession, Depends(database.session)]

    @app.get("/authors")
    async def list_authors(session: Session) -> list[AuthorDetail]:
        listed = []
        for author in await session.scalars(select(Author).order_by(Author.id)):
            by_author = select(Note).where(Note.author_id == author.id).order_by(Note.id)
            notes = await session.scalars(by_author)  # the N+1: one query per author
            summaries = [NoteSummary.model_validate(note) for note in notes]
            listed.append(AuthorDetail(id=author.id, name=author.name, notes=summaries))
        return listed

    return app


def line_of(marker: str) -> int:
    """The number of the line of this file that holds ``marker``."""
    lines = Path(__file__).read_text().splitlines()
    return next(number for number, line in enumerate(lines, 1) if marker in line)


def driver_url(driver: str, tmp_path: Path) -> str:
    """Where this module's test database on ``driver`` is named after: a database of its own
    (``<name>_queries``), apart from the plugin's, and from another pytest-xdist worker's."""
    if driver == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'queries.db'}"
    server = make_url(MYSQL_URL if driver == "asyncmy" else POSTGRES_URL)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    name = f"{server.database}_queries{'_' + worker if worker else ''}"
    drivername = server.drivername if driver == "asyncmy" else f"postgresql+{driver}"
    url = server.set(drivername=drivername, database=name)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="module", params=DRIVERS)
def dbscope_engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AsyncEngine]:
    """The plugin's engine, on a test database of each driver in turn, with the example's
    tables; skipped when the server is down, failed instead under CI=true."""
    url = driver_url(str(request.param), tmp_path_factory.mktemp("queries"))
    try:
        with (
            testing.own_database(url, alembic_config=ALEMBIC_INI) as test_url,
            testing.any_loop_engine(test_url) as engine,
        ):
            yield engine
    except DatabaseUnavailableError as error:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(str(error))
        pytest.skip(str(error))


@pytest.fixture
def dbscope_tables() -> None:
    """The tables are in dbscope_engine's database already (above)."""


@pytest.fixture
async def three_authors(dbscope_session: AsyncSession) -> None:
    """Three authors with two notes each, added before any test's count begins."""
    for name in ("Ada", "Grace", "Barbara"):
        author = Author(name=name)
        dbscope_session.add_all([Note(title=title, author=author) for title in ("one", "two")])
    await dbscope_session.commit()


@pytest.mark.usefixtures("three_authors")
async def test_listing_authors_with_their_notes_is_two_statements(
    dbscope_client: httpx.AsyncClient, dbscope_queries: QueryCounter
) -> None:
    """GET /authors loads every author's notes with selectinload: 2 statements for 3 authors."""
    async with dbscope_queries(exactly=2) as log:
        response = await dbscope_client.get("/authors")

    assert response.status_code == 200, response.text
    assert [len(author["notes"]) for author in response.json()] == [2, 2, 2]
    assert "FROM example_notes WHERE example_notes.author_id IN (...)" in log[1].shape


@pytest.mark.usefixtures("three_authors")
async def test_a_query_per_author_fails_naming_the_repeated_statement_and_its_line(
    dbscope_client: httpx.AsyncClient, dbscope_queries: QueryCounter
) -> None:
    """The same list with a query per author answers the same, in 4 statements, and fails a
    budget of 2 with the repeated statement's shape and the line that ran it."""
    async with testing.client(a_query_per_author(db)) as naive:
        with pytest.raises(QueryCountError) as failure:
            async with dbscope_queries(at_most=2):
                response = await naive.get("/authors")

    assert response.json() == (await dbscope_client.get("/authors")).json()
    head, *listed = str(failure.value).splitlines()
    repeated = (
        "3 \N{MULTIPLICATION SIGN} `SELECT ... FROM example_notes "
        "WHERE example_notes.author_id = ? "
        "ORDER BY example_notes.id`"
    )
    assert head.startswith(f"ran 4 statements, at most 2; {repeated} from ")
    assert re.search(rf"test_queries\.py:{line_of('the N+1: one query')}$", head)
    assert len(listed) == 4


@pytest.mark.dbscope_queries(exactly=2)
@pytest.mark.usefixtures("three_authors")
async def test_a_whole_test_keeps_to_its_budget(dbscope_client: httpx.AsyncClient) -> None:
    """The marker counts the test's body only: the authors its fixture added cost nothing."""
    response = await dbscope_client.get("/authors", params={"limit": 2})

    assert [author["name"] for author in response.json()] == ["Ada", "Grace"]
