"""The plugin's query counts, run by pytest on small projects: the ``dbscope_queries`` fixture
and marker, within their budget and over it, on every database and under both async plugins;
the marker's mistakes; and the guide's examples (docs/testing.md, "Counting queries").
"""

from __future__ import annotations

import textwrap

import pytest

from tests.documented import block_containing

from .plugin_projects import ASYNC_PLUGINS, run, settings_ini, write_project

TIMES = "\N{MULTIPLICATION SIGN}"
ITEMS_SHAPE = "SELECT ... FROM ptp_items ORDER BY ptp_items.id"
# The async fixture decorator of each async plugin (pytest-asyncio's strict mode needs its own).
FIXTURE = {"pytest-asyncio": "pytest_asyncio.fixture", "anyio": "pytest.fixture"}

BUDGET_TESTS = """
import pytest
import pytest_asyncio

from plugin_app import Item

pytestmark = MARK


@FIXTURE
async def three_items(dbscope_session):
    dbscope_session.add_all([Item(name=name) for name in ("a", "b", "c")])
    await dbscope_session.commit()


async def test_the_fixture_within_budget(dbscope_client, dbscope_queries, three_items):
    async with dbscope_queries(exactly=1) as log:
        assert (await dbscope_client.get("/items")).json() == ["a", "b", "c"]
    assert len(log) == 1


async def test_the_fixture_over_budget(dbscope_client, dbscope_queries):
    async with dbscope_queries(at_most=2):
        for _ in range(3):
            await dbscope_client.get("/items")


@pytest.mark.dbscope_queries(exactly=1)
async def test_the_marker_within_budget(dbscope_client, three_items):
    assert (await dbscope_client.get("/items")).json() == ["a", "b", "c"]


@pytest.mark.dbscope_queries(at_most=2)
async def test_the_marker_over_budget(dbscope_client):
    for _ in range(3):
        await dbscope_client.get("/items")
"""

MISUSED_MARKER_TESTS = """
import pytest

pytestmark = MARK


@pytest.mark.dbscope_queries(at_most=1)
async def test_without_the_transaction():
    pass


@pytest.mark.dbscope_queries(3)
async def test_a_positional_bound(dbscope_connection):
    pass


@pytest.mark.dbscope_queries(at_most=-1)
async def test_a_negative_bound(dbscope_connection):
    pass


@pytest.mark.dbscope_queries(at_most=1)
async def test_the_tests_own_error_goes_on(dbscope_connection):
    raise KeyError("its own")
"""


def line_in(pytester: pytest.Pytester, file: str, needle: str) -> str:
    """``file:line`` of the line of the project's ``file`` that holds ``needle``."""
    lines = (pytester.path / file).read_text().splitlines()
    return f"{file}:{next(number for number, line in enumerate(lines, 1) if needle in line)}"


def write_budget_project(pytester: pytest.Pytester, async_plugin: str) -> None:
    """The project of BUDGET_TESTS, for ``async_plugin``."""
    tests = BUDGET_TESTS.replace("FIXTURE", FIXTURE[async_plugin])
    if async_plugin == "anyio":  # a project without pytest-asyncio imports none of it
        tests = tests.replace("import pytest_asyncio\n", "")
    write_project(pytester, async_plugin, tests)


@pytest.mark.parametrize("async_plugin", ASYNC_PLUGINS)
def test_the_fixture_and_the_marker_fail_over_budget_naming_the_repeated_query(
    pytester: pytest.Pytester, project_url: str, async_plugin: str
) -> None:
    """Within budget the tests pass (a fixture's rows cost nothing); over it they fail with
    the repeated statement, the app's line that ran it, and every statement."""
    write_budget_project(pytester, async_plugin)

    result = run(pytester, async_plugin, project_url, "--strict-markers", in_process=True)

    result.assert_outcomes(passed=2, failed=2)
    origin = line_in(pytester, "plugin_app.py", "return list(await session.scalars(")
    head = f"ran 3 statements, at most 2; 3 {TIMES} `{ITEMS_SHAPE}` from {origin}"
    result.stdout.fnmatch_lines(
        [
            f"*QueryCountError: {head}",
            f"*   3. SELECT ptp_items.name FROM ptp_items ORDER BY ptp_items.id  ({origin})",
        ]
    )
    result.stdout.fnmatch_lines([f"*@pytest.mark.dbscope_queries: the test {head}"])
    result.stdout.fnmatch_lines(["FAILED *test_the_fixture_over_budget*"])
    result.stdout.fnmatch_lines(["FAILED *test_the_marker_over_budget*"])


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_a_misused_marker_fails_the_test_saying_what_to_do(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """A marker on a test without the test's transaction, with a positional or a negative
    bound, fails saying the fix; a test's own error goes on unchanged."""
    write_project(pytester, "pytest-asyncio", MISUSED_MARKER_TESTS)

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "*dbscope_queries counts the statements of the test's transaction, and "
            "test_without_the_transaction has none: use dbscope_client, dbscope_session or "
            "dbscope_connection in it.",
            "*@pytest.mark.dbscope_queries(3): it takes exactly=, at_most= and everything= "
            "only, by name; e.g. @pytest.mark.dbscope_queries(at_most=3).",
            "*@pytest.mark.dbscope_queries: at_most=-1 is not a number of statements*",
            "*KeyError: 'its own'",
        ],
        consecutive=False,
    )


def test_the_marker_is_registered_for_strict_markers(pytester: pytest.Pytester) -> None:
    """pytest --markers lists dbscope_queries, so --strict-markers accepts it."""
    pytester.makefile(".ini", pytest=settings_ini())

    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--markers")

    result.stdout.fnmatch_lines(
        ["@pytest.mark.dbscope_queries(exactly=None, at_most=None, everything=False): *"]
    )


# -- the guide ---------------------------------------------------------------------------------

GUIDE = "docs/testing.md"
# The app behind the guide's examples: authors and their notes, in myapp/.
MYAPP_MODELS = """
from sqlalchemy import ForeignKey, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    notes: Mapped[list["Note"]] = relationship(lazy="raise", order_by="Note.id")


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))
    author_id: Mapped[int] = mapped_column(ForeignKey("authors.id"))
"""
MYAPP_MAIN = """
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from myapp.db import db
from myapp.models import Author, Note

app = FastAPI(lifespan=db.lifespan)
Session = Annotated[AsyncSession, Depends(db.session)]


class AuthorIn(BaseModel):
    name: str


class NoteIn(BaseModel):
    author_id: int
    text: str


@app.get("/authors")
async def list_authors(session: Session) -> list[dict[str, object]]:
LIST_AUTHORS


@app.post("/authors", status_code=201)
async def post_author(author: AuthorIn, session: Session) -> None:
    session.add(Author(name=author.name))


@app.post("/notes", status_code=201)
async def post_note(note: NoteIn, session: Session) -> None:
    session.add(Note(author_id=note.author_id, text=note.text))
"""
EAGER = """
    statement = select(Author).options(selectinload(Author.notes)).order_by(Author.id)
    authors = await session.scalars(statement)
    return [{"name": a.name, "notes": [n.text for n in a.notes]} for a in authors]
"""
# The same list as first written: a query per author for their notes.
A_QUERY_PER_AUTHOR = """
    listed: list[dict[str, object]] = []
    for author in await session.scalars(select(Author).order_by(Author.id)):
        by_author = select(Note).where(Note.author_id == author.id).order_by(Note.id)
        notes = await session.scalars(by_author)
        listed.append({"name": author.name, "notes": [note.text for note in notes]})
    return listed
"""


def write_myapp(pytester: pytest.Pytester, list_authors: str) -> None:
    """myapp/ with ``list_authors`` as the body of GET /authors."""
    main = MYAPP_MAIN.replace("LIST_AUTHORS\n", list_authors.strip("\n") + "\n")
    db = 'from dbscope import Database\n\ndb = Database("sqlite+aiosqlite:///never.db")\n'
    for name, source in {
        "__init__.py": "",
        "db.py": db,
        "models.py": MYAPP_MODELS,
        "main.py": main,
    }.items():
        (pytester.path / "myapp").mkdir(exist_ok=True)
        (pytester.path / "myapp" / name).write_text(textwrap.dedent(source).lstrip("\n"))


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
def test_the_guides_query_count_examples_run_as_written(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """The guide's three tests pass on the app with selectinload; the first fails on the app
    with a query per author, with the first line of the message the guide shows."""
    settings = block_containing(GUIDE, 'dbscope_app = "myapp.main:app"', language="toml")
    pytester.makepyprojecttoml(settings)
    tests = pytester.mkdir("tests")
    for name, needle in {
        "test_authors.py": "# tests/test_authors.py",
        "test_log.py": "async with dbscope_queries() as log:",
        "test_marker.py": "@pytest.mark.dbscope_queries(at_most=1)",
    }.items():
        (tests / name).write_text(block_containing(GUIDE, needle))
    shown = block_containing(GUIDE, "ran 4 statements, at most 2", language="text")
    write_myapp(pytester, EAGER)
    pytester.syspathinsert()  # the project's directory on sys.path, as `python -m pytest` has it

    eager = run(pytester, "pytest-asyncio", project_url, "--strict-markers", in_process=True)
    write_myapp(pytester, A_QUERY_PER_AUTHOR)
    naive = run(pytester, "pytest-asyncio", project_url, "tests/test_authors.py", in_process=True)

    eager.assert_outcomes(passed=3)
    naive.assert_outcomes(failed=1)
    naive.stdout.fnmatch_lines([f"*QueryCountError: {shown.splitlines()[0]}"])
