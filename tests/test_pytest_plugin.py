"""The pytest plugin, run by pytest itself on small projects: its loops and its fixtures.

Each test writes a project (tests/plugin_projects.py) and runs pytest on it, under
pytest-asyncio or anyio, against every database: every test in a transaction of its own,
the event loops the fixtures share with the tests, the lazy-load option, and the set-up the
guide documents. The run's own database is in test_pytest_plugin_database.py, the settings
and the header in test_pytest_plugin_settings.py.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from .documented import block_containing, blocks, python_blocks
from .plugin_projects import (
    ASYNC_PLUGINS,
    ISOLATION_TESTS,
    MARK,
    ini,
    run,
    write_project,
)
from .run_databases import beside, database_exists, run_database, table_names


@pytest.mark.parametrize("async_plugin", ASYNC_PLUGINS)
def test_every_test_runs_in_a_transaction_of_its_own(
    pytester: pytest.Pytester, project_url: str, async_plugin: str
) -> None:
    """Identical tests see only their own rows; app commits and rollbacks are savepoints."""
    write_project(pytester, async_plugin, ISOLATION_TESTS)

    result = run(pytester, async_plugin, project_url, in_process=True)

    result.assert_outcomes(passed=7)
    assert table_names(project_url) == set()


@pytest.mark.parametrize("async_plugin", ASYNC_PLUGINS)
@pytest.mark.parametrize("db_backend", ["asyncpg"])
def test_a_session_wide_loop_shares_one_connection(
    pytester: pytest.Pytester, project_url: str, async_plugin: str
) -> None:
    """With dbscope_loop_scope = session, tests borrow one pooled connection, still isolated."""
    shared = """
    import pytest
    from sqlalchemy import text

    pytestmark = MARK
    BACKENDS = set()

    @pytest.mark.parametrize("n", range(3))
    async def test_backend(dbscope_session, n):
        BACKENDS.add(await dbscope_session.scalar(text("SELECT pg_backend_pid()")))
        assert len(BACKENDS) == 1
    """
    write_project(pytester, async_plugin, ISOLATION_TESTS)
    pytester.makepyfile(test_shared=textwrap.dedent(shared).replace("MARK", MARK[async_plugin]))
    loop = ["dbscope_loop_scope = session"]
    if async_plugin == "pytest-asyncio":
        loop.append("asyncio_default_test_loop_scope = session")
    pytester.makefile(".ini", pytest=ini(async_plugin, *loop))

    result = run(pytester, async_plugin, project_url, in_process=True)

    result.assert_outcomes(passed=10)


def test_a_test_in_another_loop_fails_naming_the_setting(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    """A test whose loop is not the fixtures' loop fails before it runs, naming the fix."""
    write_project(pytester, "pytest-asyncio", ISOLATION_TESTS, "dbscope_loop_scope = module")

    result = run(
        pytester, "pytest-asyncio", f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", in_process=True
    )

    result.assert_outcomes(errors=7)
    result.stdout.fnmatch_lines(["*loop of scope 'function'*dbscope_loop_scope*"])


@pytest.mark.parametrize("async_plugin", ASYNC_PLUGINS)
def test_a_test_its_plugin_does_not_run_fails_saying_how_to_mark_it(
    pytester: pytest.Pytester, tmp_path: Path, async_plugin: str
) -> None:
    """An unmarked async test asking for dbscope_session fails with how to mark it."""
    unmarked = ISOLATION_TESTS.replace("pytestmark = MARK", "")
    write_project(pytester, async_plugin, unmarked)

    url = f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"
    result = run(pytester, async_plugin, url, "-k", "test_one", in_process=True)

    result.assert_outcomes(errors=1)
    expected = "@pytest.mark.asyncio" if async_plugin == "pytest-asyncio" else "@pytest.mark.anyio"
    result.stdout.fnmatch_lines([f"*{expected}*"])


LAZY_LOAD_TEST = """
import pytest

from dbscope import LazyLoadError
from plugin_app import Child, Parent

pytestmark = MARK


async def test_a_lazy_load_in_the_app_raises(dbscope_session, dbscope_client):
    parent = Parent(children=[Child()])
    dbscope_session.add(parent)
    await dbscope_session.commit()

    with pytest.raises(LazyLoadError, match="Parent.children"):
        await dbscope_client.get(f"/parents/{parent.id}/children")
"""


@pytest.mark.parametrize("db_backend", ["sqlite"])
def test_the_lazy_load_option_makes_every_lazy_load_raise(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """--dbscope-raise-on-lazy-load turns an awaited lazy load into LazyLoadError; opt-in."""
    write_project(pytester, "pytest-asyncio", LAZY_LOAD_TEST)

    lazy_load_option = "--dbscope-raise-on-lazy-load"
    strict = run(pytester, "pytest-asyncio", project_url, lazy_load_option, in_process=True)
    default = run(pytester, "pytest-asyncio", project_url, in_process=True)

    strict.assert_outcomes(passed=1)
    default.assert_outcomes(failed=1)
    default.stdout.fnmatch_lines(["*DID NOT RAISE*"])


DOCUMENTED_APP = {
    "myapp/__init__.py": "",
    "myapp/db.py": """
from dbscope import Database

db = Database("postgresql+asyncpg://nobody@127.0.0.1:9/production")
""",
    "myapp/models.py": """
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "ptp_notes"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(200))
""",
    "myapp/main.py": """
from typing import Annotated

from fastapi import Depends, FastAPI
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession

from myapp.db import db
from myapp.models import Note

app = FastAPI(lifespan=db.lifespan)
Session = Annotated[AsyncSession, Depends(db.session)]


class NoteIn(BaseModel):
    text: str


@app.post("/notes", status_code=201)
async def post_note(note: NoteIn, session: Session) -> None:
    session.add(Note(text=note.text))
""",
}


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
def test_the_documented_set_up_runs_as_written(pytester: pytest.Pytester, project_url: str) -> None:
    """docs/testing.md's set-up, its first test and its unittest example pass as written."""
    settings = blocks("docs/testing.md", "toml")[0]
    first_test = python_blocks("docs/testing.md")[0]
    unittest_example = block_containing("docs/testing.md", "IsolatedAsyncioTestCase")
    for name, source in DOCUMENTED_APP.items():
        (pytester.path / name).parent.mkdir(exist_ok=True)
        (pytester.path / name).write_text(textwrap.dedent(source))
    pytester.makepyprojecttoml(settings)
    pytester.mkdir("tests")
    (pytester.path / "tests" / "test_notes.py").write_text(first_test)
    documented_url = "postgresql+asyncpg://postgres@localhost/test"
    assert documented_url in unittest_example
    # The example makes a database of its own, apart from the one the plugin makes.
    example_url = beside(project_url, "ptp_example")
    unittest_example = unittest_example.replace(documented_url, example_url)
    (pytester.path / "tests" / "test_unittest_notes.py").write_text(unittest_example)

    pytester.syspathinsert()  # the project's directory on sys.path, as `python -m pytest` has it

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    result.assert_outcomes(passed=2)
    assert table_names(project_url) == set()
    assert not database_exists(run_database(example_url))
