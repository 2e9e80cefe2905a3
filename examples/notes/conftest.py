"""The example's test set-up: dbscope's pytest plugin, told which app, Database and migrations.

Every test runs in one transaction that is rolled back at its end, HTTP requests included,
once on a SQLite file and once on PostgreSQL (``DBSCOPE_TEST_POSTGRES_URL``, default
``postgresql://postgres@127.0.0.1:5432/test``; skipped when that server is down, failed
instead under ``CI=true``); or only on the database the plugin's URL setting names, e.g.
``DBSCOPE_TEST_URL=mysql+asyncmy://root@127.0.0.1/test pytest examples/notes``. Under
pytest-xdist (``pytest -n 4 examples/notes``) each worker runs in a database of its own.
tests/conftest.py does not reach examples/, so this file stands alone, as a project's own
conftest.py would.
"""

import os
import socket
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from dbscope import Database

from .app import app, db

POSTGRES_URL = os.environ.get(
    "DBSCOPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def dbscope_database() -> Database:
    """The Database the app uses; the plugin runs its units of work in each test's transaction."""
    return db


@pytest.fixture(scope="session")
def dbscope_app() -> FastAPI:
    """The app that uvicorn serves."""
    return app


@pytest.fixture(scope="session")
def dbscope_alembic_config() -> Path:
    """The example's migrations, which make its tables once per test database."""
    return Path(__file__).with_name("alembic.ini")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test of the plugin on a SQLite file, then on PostgreSQL; or only on the
    database the plugin's URL setting names (``--dbscope-url``, ``DBSCOPE_TEST_URL``)."""
    if "dbscope_url" not in metafunc.fixturenames:
        return
    given = metafunc.config.getoption("dbscope_url") or os.environ.get("DBSCOPE_TEST_URL")
    databases = [given] if given else ["sqlite", "postgresql"]
    ids = [make_url(given).get_backend_name()] if given else databases
    metafunc.parametrize("dbscope_url", databases, ids=ids, indirect=True, scope="session")


@pytest.fixture(scope="session")
def dbscope_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file of the run's own, the PostgreSQL test database, or the URL given.

    The plugin runs the tests in a database it makes beside the one named, and under
    pytest-xdist (``pytest -n 4``) in one per worker.
    """
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('notes') / 'notes.db'}"
    if request.param == "postgresql":
        require_server(POSTGRES_URL)
        return POSTGRES_URL
    return str(request.param)


@pytest.fixture
def dbscope_raise_on_lazy_load() -> bool:
    """Any lazy load fails the tests: every endpoint loads up front what it shows."""
    return True


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"


def require_server(url: str) -> None:
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


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The PostgreSQL test database, for tests that run the service on it themselves."""
    require_server(POSTGRES_URL)
    return POSTGRES_URL
