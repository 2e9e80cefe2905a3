"""Shared test fixtures: real databases chosen by a list of URLs, and a real uvicorn server.

Servers are taken from the environment, with the local defaults:

- ``DBSCOPE_TEST_POSTGRES_URL`` (``postgresql://postgres@127.0.0.1:5432/test``), run through
  both asyncpg and psycopg;
- ``DBSCOPE_TEST_MYSQL_URL`` (``mysql+asyncmy://root@127.0.0.1:3306/test``);
- SQLite needs nothing: each test gets a file of its own.

An unreachable server skips its tests locally and fails them under ``CI=true``.

On the test's database, ``tables`` makes the tables a test needs (any backend) and drops
them after it, ``db`` is a connected Database, and ``project_url`` is cleared of what the
plugin's tests leave (tests/plugin_projects.py). The builders and helpers the test modules
share (an app from its routes' bodies, an in-process client, killing a backend) live in
tests/helpers.py; a test module never imports from another one.

``replica_pair`` is a PostgreSQL primary with a streaming replica (tests/replica_cluster.py),
started for the run by tests/replicas/cluster only when a test asks for it;
``primary_url`` and ``replica_url`` name the two through each PostgreSQL driver in turn.
``patroni`` is a two-node Patroni cluster (tests/patroni_cluster.py), started for the run by
tests/patroni/cluster the same way.
``pgbouncer`` is a PgBouncer in front of the test server in each transaction mode
(tests/pgbouncer_service.py), started for the run by tests/pgbouncer/bouncer the same way.
"""

from __future__ import annotations

import functools
import inspect
import os
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
from sqlalchemy.engine import make_url

from dbscope import Database, DatabaseSettings
from tests.helpers import Tables
from tests.patroni_cluster import PatroniCluster, ensure_cluster
from tests.patroni_cluster import release as release_cluster
from tests.pgbouncer_service import Bouncers, ensure_bouncers
from tests.pgbouncer_service import release as release_bouncers
from tests.plugin_projects import clean_project_database
from tests.replica_cluster import ReplicaPair, alone, ensure_pair, release
from tests.services import ServiceUnavailable

# tests.docs_blocks: every python block of the docs is run by a test, or says why not.
pytest_plugins = ["pytester", "tests.docs_blocks"]

# tests/run_suite.py runs the tests that keep a CPU busy under pytest-xdist, each worker on
# databases of its own (``<name>_gw0``): what the worker's tests, and the processes they
# start, are given for the two servers' URLs.
PER_WORKER = "DBSCOPE_TEST_DATABASE_PER_WORKER"


def per_worker(url: str, worker: str) -> str:
    """``url`` with the database of the pytest-xdist worker ``worker`` (``gw0``) for its own."""
    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_{worker}").render_as_string(False)


def _url(variable: str, default: str) -> str:
    url = os.environ.get(variable, default)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and os.environ.get(PER_WORKER):
        url = os.environ[variable] = per_worker(url, worker)
    return url


POSTGRES_URL = _url("DBSCOPE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MYSQL_URL = _url("DBSCOPE_TEST_MYSQL_URL", "mysql+asyncmy://root@127.0.0.1:3306/test")

# A service of the run's (the replica pair, PgBouncer, the Patroni cluster).
S = TypeVar("S")

BACKENDS = ("sqlite", "asyncpg", "psycopg", "asyncmy")
POSTGRES_DRIVERS = ("asyncpg", "psycopg")


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Run every coroutine test through anyio's pytest plugin (on asyncio, below).

    Marking here, before anyio's own hook looks, is what lets anyio add its fixture to tests
    that are parametrized over databases as well.
    """
    if inspect.iscoroutinefunction(obj):
        pytest.mark.anyio(obj)


# The fixtures of the services the run starts; their tests are marked ``services``, and those
# of tests/reliability (storms of cancelled requests and slow queries) ``reliability``, so
# that tests/run_suite.py can run them beside the others.
SERVICES = frozenset({"replica_pair", "pgbouncer", "patroni"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``services`` each test that uses the replica pair, PgBouncer or Patroni, and
    ``reliability`` each of tests/reliability."""
    for item in items:
        if SERVICES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.services)
        if "reliability" in item.path.parts:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture
def anyio_backend() -> str:
    """SQLAlchemy's asyncio extension runs on asyncio only."""
    return "asyncio"


@functools.cache
def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def require_server(url: str) -> None:
    """Skip (locally) or fail (under CI=true) when the server behind ``url`` is down."""
    parsed = make_url(url)
    host, port = parsed.host or "127.0.0.1", parsed.port or 5432
    if _reachable(host, port):
        return
    message = (
        f"No database server at {host}:{port}; start it as DEVELOPERS.md says, "
        "or point DBSCOPE_TEST_POSTGRES_URL / DBSCOPE_TEST_MYSQL_URL elsewhere."
    )
    unavailable(message)


def unavailable(message: str) -> NoReturn:
    """Skip the test with ``message``, or fail it under CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def url_for(backend: str, tmp_path: Path) -> str:
    """The test database URL for one backend ('sqlite', 'asyncpg', 'psycopg', 'asyncmy')."""
    if backend == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"
    if backend in POSTGRES_DRIVERS:
        url = make_url(POSTGRES_URL).set(drivername=f"postgresql+{backend}")
        rendered = url.render_as_string(hide_password=False)
        require_server(rendered)
        return rendered
    require_server(MYSQL_URL)
    return MYSQL_URL


@pytest.fixture(params=BACKENDS)
def db_backend(request: pytest.FixtureRequest) -> str:
    """Each backend in turn."""
    return str(request.param)


@pytest.fixture
def database_url(db_backend: str, tmp_path: Path) -> str:
    """A URL for each backend in turn: SQLite file, asyncpg, psycopg, asyncmy."""
    return url_for(db_backend, tmp_path)


@pytest.fixture(params=POSTGRES_DRIVERS)
def postgres_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A PostgreSQL URL through asyncpg, then through psycopg."""
    return url_for(str(request.param), tmp_path)


@pytest.fixture
def mysql_url(tmp_path: Path) -> str:
    """The MariaDB/MySQL URL through asyncmy."""
    return url_for("asyncmy", tmp_path)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """A SQLite file of this test's own."""
    return url_for("sqlite", tmp_path)


def _service(what: str, ensure: Callable[[], S], release: Callable[[S], None]) -> Iterator[S]:
    """The body of a service's fixture: the service ``ensure`` finds running or starts, or
    "No {what}" skipped (failed under CI=true) when there is none; ``release`` stops it at
    the run's end if ``ensure`` started it."""
    try:
        service = ensure()
    except ServiceUnavailable as error:
        unavailable(f"No {what}: {error}")
    yield service
    release(service)


@pytest.fixture(scope="session")
def replica_pair() -> Iterator[ReplicaPair]:
    """A PostgreSQL primary and a streaming replica of it (tests/replica_cluster.py): the
    one DBSCOPE_TEST_PRIMARY_URL / DBSCOPE_TEST_REPLICA_URL name, or tests/replicas/cluster's,
    started for the run if it is not running (and then stopped at the run's end)."""
    yield from _service("replica pair", ensure_pair, release)


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[Bouncers]:
    """PgBouncer in transaction mode in front of the test server, with and without prepared
    statements kept (tests/pgbouncer_service.py): the ones DBSCOPE_TEST_PGBOUNCER_URL and
    DBSCOPE_TEST_PGBOUNCER_PREPARED_URL name, or tests/pgbouncer/bouncer's, started for the run
    if they are not running (and then stopped at the run's end)."""
    require_server(POSTGRES_URL)
    yield from _service("PgBouncer", ensure_bouncers, release_bouncers)


@pytest.fixture(scope="session")
def patroni() -> Iterator[PatroniCluster]:
    """A two-node Patroni cluster (tests/patroni_cluster.py): tests/patroni/cluster's,
    started for the run with synchronous_mode if it is not running (and then stopped at the
    run's end)."""
    yield from _service("Patroni cluster", ensure_cluster, release_cluster)


@pytest.fixture(params=POSTGRES_DRIVERS)
def replica_driver(request: pytest.FixtureRequest) -> str:
    """The driver of primary_url and replica_url: asyncpg, then psycopg."""
    return str(request.param)


@pytest.fixture
def primary_url(replica_pair: ReplicaPair, replica_driver: str) -> Iterator[str]:
    """The replica pair's primary, through each PostgreSQL driver in turn; the pair is the
    test's alone meanwhile (tests/replica_cluster.py's ``alone``)."""
    with alone():
        yield replica_pair.url("primary", replica_driver)


@pytest.fixture
def replica_url(replica_pair: ReplicaPair, replica_driver: str) -> str:
    """The replica pair's replica, through the same driver as primary_url."""
    return replica_pair.url("replica", replica_driver)


@pytest.fixture
async def tables(database_url: str) -> AsyncIterator[Tables]:
    """Tables for the test on its database, made outside dbscope; dropped after the test."""
    made = Tables(database_url)
    yield made
    await made.drop_all()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """A connected Database on the test's database; disposed after the test."""
    async with Database(database_url) as database:
        yield database


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove every variable Database.from_env() reads, so tests set only their own."""
    for name in DatabaseSettings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture
def project_url(database_url: str) -> Iterator[str]:
    """For the plugin's tests (tests/plugin_projects.py): the database URL, with no ptp_*
    table and no run database left by an earlier run."""
    yield from clean_project_database(database_url)
