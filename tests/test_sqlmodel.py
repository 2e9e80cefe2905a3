"""SQLModel's session class as every unit's session: ``Database(url, session_class=...)``.

The models here are SQLModel table models in a registry of their own (the guide's live in
``SQLModel.metadata``, and run in a project of their own under the plugin). Requests go over
real HTTP to uvicorn (tests/documented.py's ``serving``), so that a failed commit shows as the
status a client gets.
"""

import asyncio
import textwrap
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
import sqlmodel
from fastapi import Depends, FastAPI, HTTPException
from packaging.requirements import Requirement
from sqlalchemy.ext.asyncio import AsyncSession as SQLAlchemyAsyncSession
from sqlalchemy.orm import registry
from sqlmodel import Field, Relationship, SQLModel, col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from dbscope import ConfigurationError, Database, LazyLoadError, SessionSharedError
from tests.documented import block_containing, run_block, serving
from tests.helpers import Tables, count_rows, imported_by
from tests.plugin_projects import run

ROOT = Path(__file__).parent.parent
GUIDE = "docs/sqlmodel.md"
ON_SQLITE_AND_POSTGRES = pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "psycopg"])


class Base(SQLModel, registry=registry()):
    """The tests' models, apart from SQLModel.metadata (where the guide's go)."""


class Squad(Base, table=True):
    __tablename__ = "sqlm_squads"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=50)
    members: list["Member"] = Relationship(back_populates="squad")


class Member(Base, table=True):
    __tablename__ = "sqlm_members"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=50, unique=True)
    squad_id: int | None = Field(default=None, foreign_key="sqlm_squads.id")
    squad: Squad | None = Relationship(back_populates="members")


def members_app(db: Database) -> FastAPI:
    """An app whose endpoints take SQLModel's session through ``Depends(db.session)``."""
    app = FastAPI(lifespan=db.lifespan)
    session_type = Annotated[AsyncSession, Depends(db.session)]

    @app.get("/members")
    async def list_members(session: session_type) -> list[str]:
        return list(await session.exec(select(Member.name).order_by(col(Member.id))))

    @app.post("/members/{name}", status_code=201)
    async def add_member(name: str, session: session_type) -> str:
        session.add(Member(name=name))  # no flush: the INSERT runs at the COMMIT
        return name

    @app.post("/members/{name}/then-fail")
    async def add_member_then_fail(name: str, session: session_type) -> None:
        session.add(Member(name=name))
        await session.flush()
        raise HTTPException(404, "written, then not found")

    return app


@pytest.fixture
async def members_db(database_url: str, tables: Tables) -> Database:
    """A Database of SQLModel sessions on the test's database, with the tables; unconnected."""
    await tables.create_all(Base.metadata)
    return Database(database_url, session_class=AsyncSession)


@pytest.fixture
async def members_http(members_db: Database) -> AsyncIterator[httpx.AsyncClient]:
    """A client of members_app under uvicorn, over HTTP."""
    async with (
        serving(members_app(members_db)) as base_url,
        httpx.AsyncClient(base_url=base_url, timeout=10) as client,
    ):
        yield client


# -- requests ---------------------------------------------------------------------------------


@ON_SQLITE_AND_POSTGRES
async def test_an_endpoint_reads_with_exec_through_db_session(
    members_http: httpx.AsyncClient,
) -> None:
    """A row a request stored is read by the next with session.exec(select(...))."""
    added = await members_http.post("/members/ada")
    listed = await members_http.get("/members")

    assert added.status_code == 201
    assert listed.json() == ["ada"]


@ON_SQLITE_AND_POSTGRES
async def test_a_write_whose_commit_fails_is_answered_409_and_not_stored(
    members_http: httpx.AsyncClient, database_url: str
) -> None:
    """The INSERT of a duplicate name fails at the COMMIT, before the response: 409, not 201."""
    first = await members_http.post("/members/ada")
    again = await members_http.post("/members/ada")

    assert first.status_code == 201
    assert again.status_code == 409, again.text
    assert again.json()["detail"]["cause"] == "constraint_violation"
    assert await count_rows(database_url, "sqlm_members") == 1


@ON_SQLITE_AND_POSTGRES
async def test_an_endpoint_that_raises_after_writing_stores_nothing(
    members_http: httpx.AsyncClient, database_url: str
) -> None:
    """An HTTPException after a flush rolls the request's writes back."""
    response = await members_http.post("/members/ada/then-fail")

    assert response.status_code == 404
    assert await count_rows(database_url, "sqlm_members") == 0


# -- outside requests -------------------------------------------------------------------------


@ON_SQLITE_AND_POSTGRES
async def test_a_transaction_gives_sqlmodels_session_and_commits_at_its_end(
    members_db: Database, database_url: str
) -> None:
    """db.transaction() yields an instance of SQLModel's AsyncSession, committed on exit."""
    async with members_db, members_db.transaction() as session:
        assert isinstance(session, AsyncSession)
        session.add(Member(name="ada"))
        await session.flush()
        found = (await session.exec(select(Member.name))).all()

    assert found == ["ada"]
    assert await count_rows(database_url, "sqlm_members") == 1


@ON_SQLITE_AND_POSTGRES
async def test_on_commit_callbacks_run_once_a_sqlmodel_unit_commits(
    members_db: Database,
) -> None:
    """A callback registered in the unit runs after its commit; one in a failed unit never."""
    ran: list[str] = []

    async def roll_back() -> None:
        async with members_db.transaction():
            members_db.on_commit(lambda: ran.append("rolled back"))
            raise RuntimeError

    async with members_db:
        async with members_db.transaction() as session:
            session.add(Member(name="ada"))
            members_db.on_commit(lambda: ran.append("committed"))
        with pytest.raises(RuntimeError):
            await roll_back()

    assert ran == ["committed"]


@ON_SQLITE_AND_POSTGRES
async def test_a_lazy_load_of_a_relationship_raises_lazy_load_error(
    members_db: Database,
) -> None:
    """Reading a relationship that was not loaded raises LazyLoadError naming it."""
    async with members_db:
        async with members_db.transaction() as session:
            session.add(Member(name="ada", squad=Squad(name="engines")))
        async with members_db.transaction() as session:
            assert isinstance(session, AsyncSession)  # for the type checker: SQLModel's
            member = (await session.exec(select(Member))).one()
            with pytest.raises(LazyLoadError, match=r"Member\.squad is not loaded"):
                print(member.squad)


@ON_SQLITE_AND_POSTGRES
async def test_raise_on_lazy_load_refuses_even_a_load_that_could_run(database_url: str) -> None:
    """With raise_on_lazy_load, a lazy load inside run_sync raises LazyLoadError too."""
    db = Database(database_url, session_class=AsyncSession, raise_on_lazy_load=True)
    tables = Tables(database_url)
    await tables.create_all(Base.metadata)
    try:
        async with db:
            async with db.transaction() as session:
                session.add(Member(name="ada", squad=Squad(name="engines")))
            async with db.transaction() as session:
                assert isinstance(session, AsyncSession)
                member = (await session.exec(select(Member))).one()
                with pytest.raises(LazyLoadError, match="raise_on_lazy_load is on"):
                    await session.run_sync(lambda _: member.squad)
    finally:
        await tables.drop_all()


@ON_SQLITE_AND_POSTGRES
async def test_two_tasks_in_one_sqlmodel_session_get_session_shared_error(
    members_db: Database,
) -> None:
    """exec() lets one task at a time in: gather() over one session is refused at once."""

    async def names(session: AsyncSession) -> list[str]:
        return list(await session.exec(select(Member.name)))

    async with members_db, members_db.transaction() as session:
        assert isinstance(session, AsyncSession)
        outcomes = await asyncio.gather(names(session), names(session), return_exceptions=True)

    assert [type(outcome) for outcome in outcomes].count(SessionSharedError) == 1


def test_databases_with_one_session_class_share_one_class_made_once(tmp_path: Path) -> None:
    """dbscope's class over SQLModel's is made once, and is an instance of both."""
    first = Database(f"sqlite+aiosqlite:///{tmp_path / 'a.db'}", session_class=AsyncSession)
    second = Database(f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", session_class=AsyncSession)

    async def session_class(db: Database) -> type[SQLAlchemyAsyncSession]:
        async with db, db.transaction() as session:
            return type(session)

    classes = {asyncio.run(session_class(first)), asyncio.run(session_class(second))}
    assert len(classes) == 1
    (made,) = classes
    assert issubclass(made, AsyncSession)
    assert made.__qualname__ == "UnitAsyncSession[sqlmodel.ext.asyncio.session.AsyncSession]"


# -- what is refused ---------------------------------------------------------------------------


class NotASessionsSession(SQLAlchemyAsyncSession):
    sync_session_class = dict  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (42, "session_class=42 is not a class: pass the class itself"),
        (
            "sqlmodel.ext.asyncio.session.AsyncSession",
            "session_class='sqlmodel.ext.asyncio.session.AsyncSession' is not a class",
        ),
        (
            sqlmodel.Session,
            "session_class=sqlmodel.orm.session.Session is a synchronous Session, and dbscope's "
            "units of work are async: pass the AsyncSession that goes with it (e.g. "
            "session_class=sqlmodel.ext.asyncio.session.AsyncSession",
        ),
        (dict, "session_class=builtins.dict is not a subclass of sqlalchemy.ext.asyncio."),
        (
            NotASessionsSession,
            "has sync_session_class=<class 'dict'>, which is not a subclass of sqlalchemy.orm.",
        ),
    ],
)
def test_a_session_class_dbscope_cannot_use_is_refused_naming_it(given: Any, message: str) -> None:
    """Not a class, SQLModel's sync Session, another class: ConfigurationError with the fix."""
    with pytest.raises(ConfigurationError) as refused:
        Database("sqlite+aiosqlite:///never.db", session_class=given)

    assert message in str(refused.value)


@ON_SQLITE_AND_POSTGRES
async def test_from_env_takes_the_session_class_too(
    clean_env: pytest.MonkeyPatch, database_url: str, tables: Tables
) -> None:
    """Database.from_env(session_class=...) gives SQLModel's sessions, the URL from the env."""
    await tables.create_all(Base.metadata)
    clean_env.setenv("DATABASE_URL", database_url)
    db = Database.from_env(session_class=AsyncSession)

    async with db, db.transaction() as session:
        assert isinstance(session, AsyncSession)
        counted = (await session.exec(select(func.count()).select_from(Member))).one()

    assert counted == 0


def test_sqlmodel_is_an_extra_that_import_dbscope_never_imports() -> None:
    """pyproject lists SQLModel as the extra `sqlmodel`; `import dbscope` loads none of it."""
    imported = imported_by("import dbscope", "sqlmodel")
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]

    assert imported == []
    assert not [line for line in project["dependencies"] if "sqlmodel" in line]
    extra = [Requirement(line).name for line in project["optional-dependencies"]["sqlmodel"]]
    assert extra == ["sqlmodel"]


# -- the guide ---------------------------------------------------------------------------------


@ON_SQLITE_AND_POSTGRES
async def test_the_guides_database_gives_sqlmodels_sessions(database_url: str) -> None:
    """The guide's first block: every unit of its Database has SQLModel's session."""
    code = block_containing(GUIDE, "from dbscope import Database\n\ndb = Database(")
    db = run_block(code, database_url)["db"]

    async with db, db.transaction() as session:
        assert isinstance(session, AsyncSession)
        one = (await session.exec(select(sqlmodel.literal(1)))).one()

    assert one == 1


def write_guide_project(pytester: pytest.Pytester) -> None:
    """The guide's app (myapp/), job and tests (tests/), and its pytest settings."""
    package = pytester.mkpydir("myapp")
    for name in ("models", "main", "jobs"):
        (package / f"{name}.py").write_text(block_containing(GUIDE, f"# myapp/{name}.py\n"))
    tests = pytester.mkdir("tests")
    (tests / "test_heroes.py").write_text(block_containing(GUIDE, "# tests/test_heroes.py\n"))
    settings = block_containing(GUIDE, "[tool.pytest.ini_options]", language="toml")
    # The guide's settings, and for this project the suite's strictness (a setting the guide
    # leaves out, which pytest-asyncio warns of, fails the run) and its own path.
    extra = """
        pythonpath = ["."]
        filterwarnings = ["error"]
    """
    pytester.makepyprojecttoml(settings + textwrap.dedent(extra))


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg", "asyncmy"])
def test_the_guides_app_and_tests_pass_under_the_plugin(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """The guide's models, app, job and tests, run by pytest with dbscope's plugin.

    On asyncpg of the two PostgreSQL drivers: the guide's code is the same on both, and
    SQLModel's sessions over psycopg are the tests above (ON_SQLITE_AND_POSTGRES)."""
    write_guide_project(pytester)

    # In a subprocess: the guide's models go into SQLModel.metadata, which this process keeps
    # from one run to the next (a second run in it would define its tables twice).
    result = run(pytester, "pytest-asyncio", project_url)

    result.assert_outcomes(passed=4)
