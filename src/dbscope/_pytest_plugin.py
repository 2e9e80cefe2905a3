"""The pytest plugin: every test in one transaction that is rolled back, HTTP tests included.

Registered through the ``pytest11`` entry point ``dbscope`` when dbscope is installed, and
inert until a test asks for one of its fixtures, all named ``dbscope_*``. docs/testing.md
describes the fixtures and the settings. The fixtures are thin layers over
:mod:`dbscope.testing` and use dbscope's public API only.

Event loops. The async fixtures must run in the loop of the test that uses them, and
pytest-asyncio and anyio each run async fixtures their own way, so the plugin builds its
async fixtures at start-up (``pytest_configure``) for the plugin that runs the tests
(``dbscope_async_plugin``) and for the loop scope the tests run in (``dbscope_loop_scope``):

- loop scope ``function`` (each test its own loop, the default of both plugins): one engine
  that pools nothing serves every loop, and each test opens one connection;
- a wider loop scope: a pooled engine is built in that loop and lives as long as it, and a
  test costs a BEGIN and a ROLLBACK on a connection it borrows.

Before a test that uses an async fixture runs, the plugin checks that the test will run in
that same loop, and otherwise fails it with a message saying which setting to change.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Final, Literal, NoReturn, TypeVar, cast, get_args

import pytest
from sqlalchemy import MetaData
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from dbscope import Database, DbscopeError, testing

if TYPE_CHECKING:
    import httpx

URL_VARIABLE: Final = "DBSCOPE_TEST_URL"
LoopScope = Literal["function", "class", "module", "package", "session"]
LOOP_SCOPES: Final = get_args(LoopScope)
ASYNC_PLUGINS: Final = ("pytest-asyncio", "anyio")
ASYNC_FIXTURES: Final = ("dbscope_connection", "dbscope_session", "dbscope_client")


@dataclass(frozen=True)
class _Setup:
    """How this run's async fixtures are built: which plugin runs them, in which loop."""

    async_plugin: str
    loop_scope: LoopScope

    @property
    def async_fixtures(self) -> tuple[str, ...]:
        if self.loop_scope == "function":
            return ASYNC_FIXTURES
        return (*ASYNC_FIXTURES, "dbscope_engine")


_Function = TypeVar("_Function", bound=Callable[..., Any])
_SETUP = pytest.StashKey[_Setup]()
_DEFAULT_DATABASE = pytest.StashKey[Database]()


# -- options and settings ----------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """The command-line options and the ini settings of docs/testing.md."""
    group = parser.getgroup("dbscope", "dbscope: one rolled-back transaction per test")
    group.addoption(
        "--dbscope-url",
        dest="dbscope_url",
        metavar="URL",
        help=f"URL of the test database (else ${URL_VARIABLE}, else the dbscope_url setting).",
    )
    group.addoption(
        "--dbscope-keep-tables",
        dest="dbscope_keep_tables",
        action="store_true",
        default=None,
        help="Keep the tables created for the run instead of dropping them at the end.",
    )
    group.addoption(
        "--dbscope-raise-on-lazy-load",
        dest="dbscope_raise_on_lazy_load",
        action="store_true",
        default=None,
        help="Make every lazy load in the app and the tests raise dbscope.LazyLoadError.",
    )
    parser.addini("dbscope_url", "URL of the test database.", default="")
    parser.addini("dbscope_database", "The app's Database, as 'package.module:name'.", default="")
    parser.addini("dbscope_app", "The ASGI app, as 'package.module:name'.", default="")
    parser.addini(
        "dbscope_metadata",
        "The MetaData (or declarative base) whose tables to create, as 'module:name'.",
        default="",
    )
    parser.addini(
        "dbscope_alembic_config",
        "alembic.ini whose migrations create the tables (instead of dbscope_metadata).",
        default="",
    )
    parser.addini("dbscope_keep_tables", "Keep the tables at the end.", type="bool", default=False)
    parser.addini(
        "dbscope_raise_on_lazy_load",
        "Make every lazy load raise dbscope.LazyLoadError.",
        type="bool",
        default=False,
    )
    parser.addini(
        "dbscope_async_plugin",
        "The plugin that runs the async tests: pytest-asyncio or anyio "
        "(default: pytest-asyncio if it is active, else anyio).",
        default="",
    )
    parser.addini(
        "dbscope_loop_scope",
        "The scope of the event loop the tests run in: function, class, module, package or "
        "session (default: asyncio_default_test_loop_scope under pytest-asyncio, else "
        "function).",
        default="",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Build the async fixtures for the plugin and the loop scope the tests run in."""
    plugin = _async_plugin(config)
    setup = _Setup(async_plugin=plugin, loop_scope=_loop_scope(config, plugin))
    config.stash[_SETUP] = setup
    config.pluginmanager.register(_async_fixtures(setup), "dbscope-async-fixtures")


def _async_plugin(config: pytest.Config) -> str:
    chosen = str(config.getini("dbscope_async_plugin")).strip()
    asyncio_usable = config.pluginmanager.has_plugin("asyncio") and _has_loop_scopes()
    if not chosen:
        return "pytest-asyncio" if asyncio_usable else "anyio"
    if chosen not in ASYNC_PLUGINS:
        message = f"dbscope_async_plugin = {chosen!r}: use 'pytest-asyncio' or 'anyio'."
        raise pytest.UsageError(message)
    if chosen == "pytest-asyncio" and not asyncio_usable:
        message = (
            "dbscope_async_plugin = 'pytest-asyncio', but no pytest-asyncio 0.24 or later is "
            "active: pip install -U pytest-asyncio, or set dbscope_async_plugin = 'anyio'."
        )
        raise pytest.UsageError(message)
    return chosen


def _has_loop_scopes() -> bool:
    """Whether the installed pytest-asyncio has loop scopes (0.24 and later)."""
    import pytest_asyncio

    return "loop_scope" in inspect.signature(pytest_asyncio.fixture).parameters


def _loop_scope(config: pytest.Config, async_plugin: str) -> LoopScope:
    chosen = str(config.getini("dbscope_loop_scope")).strip()
    if not chosen and async_plugin == "pytest-asyncio":
        chosen = _default_test_loop_scope(config)
    chosen = chosen or "function"
    if chosen not in LOOP_SCOPES:
        message = f"dbscope_loop_scope = {chosen!r}: use one of {', '.join(LOOP_SCOPES)}."
        raise pytest.UsageError(message)
    return cast("LoopScope", chosen)


def _default_test_loop_scope(config: pytest.Config) -> str:
    """pytest-asyncio's asyncio_default_test_loop_scope (an ini key since 0.24)."""
    try:
        return str(config.getini("asyncio_default_test_loop_scope") or "function")
    except ValueError:
        return "function"


def pytest_report_header(config: pytest.Config) -> str | None:
    """One line naming the test database (password masked), when one is configured."""
    setup = config.stash.get(_SETUP, None)
    url = _configured_url(config)
    if setup is None or not url:
        return None
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        shown = "(an unparseable URL)"
    return f"dbscope: {shown} ({setup.async_plugin}, loop scope {setup.loop_scope})"


def _configured_url(config: pytest.Config) -> str:
    return str(
        config.getoption("dbscope_url")
        or os.environ.get(URL_VARIABLE)
        or config.getini("dbscope_url")
        or ""
    )


def _flag(config: pytest.Config, name: str) -> bool:
    option = config.getoption(name)
    return bool(config.getini(name) if option is None else option)


# -- the check before each test ----------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fail a test whose async dbscope fixtures would run in another loop than the test."""
    setup = item.config.stash.get(_SETUP, None)
    if setup is None or not isinstance(item, pytest.Function):
        return
    used = [name for name in setup.async_fixtures if name in item.fixturenames]
    if used:
        problem = _loop_problem(item, setup, ", ".join(used))
        if problem is not None:
            pytest.fail(problem, pytrace=False)


def _loop_problem(item: pytest.Function, setup: _Setup, used: str) -> str | None:
    is_anyio_test = "anyio_backend" in item.fixturenames
    if setup.async_plugin == "anyio":
        if is_anyio_test:
            return None
        return (
            f"{item.name} uses {used}, which dbscope runs under anyio's pytest plugin "
            "(dbscope_async_plugin), but anyio does not run this test: write it as `async "
            "def` and mark it with @pytest.mark.anyio, with an anyio_backend fixture that "
            "returns 'asyncio'. To run dbscope's fixtures under pytest-asyncio instead, set "
            "dbscope_async_plugin = 'pytest-asyncio'."
        )
    import pytest_asyncio

    if is_anyio_test or not pytest_asyncio.is_async_test(item):
        runner = "anyio runs" if is_anyio_test else "pytest-asyncio does not run"
        return (
            f"{item.name} uses {used}, which dbscope runs under pytest-asyncio "
            f"(dbscope_async_plugin), but {runner} this test: write it as `async def` and "
            "mark it with @pytest.mark.asyncio (or set asyncio_mode = 'auto'). To run "
            "dbscope's fixtures under anyio instead, set dbscope_async_plugin = 'anyio'."
        )
    marker = item.get_closest_marker("asyncio")
    kwargs = marker.kwargs if marker is not None else {}
    default = _default_test_loop_scope(item.config)
    test_scope = kwargs.get("loop_scope") or kwargs.get("scope") or default
    if test_scope == setup.loop_scope:
        return None
    return (
        f"{item.name} runs in the event loop of scope {test_scope!r}, but dbscope's "
        f"fixtures run in the loop of scope {setup.loop_scope!r} (dbscope_loop_scope), and "
        "a connection cannot move between loops. Set dbscope_loop_scope = "
        f"'{test_scope}' if all tests that use dbscope run in that loop, or give this test "
        f"the loop scope {setup.loop_scope!r}."
    )


# -- settings as fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="session")
def dbscope_url(request: pytest.FixtureRequest) -> str:
    """The URL of the test database: --dbscope-url, $DBSCOPE_TEST_URL or dbscope_url."""
    url = _configured_url(request.config)
    if not url:
        _fail(
            "dbscope needs a test database whose tables it may create and drop. Name it "
            "with --dbscope-url=URL, or the environment variable DBSCOPE_TEST_URL, or "
            "dbscope_url = 'URL' in [tool.pytest.ini_options] of pyproject.toml, or "
            "override the session-scoped fixture dbscope_url in conftest.py. For example: "
            "postgresql+asyncpg://postgres@localhost/test or sqlite+aiosqlite:///test.db"
        )
    return url


@pytest.fixture(scope="session")
def dbscope_metadata(request: pytest.FixtureRequest) -> MetaData | None:
    """The tables to create, from dbscope_metadata ('module:Base.metadata'); None if unset."""
    found = _load(request.config, "dbscope_metadata")
    if found is None:
        return None
    metadata = found if isinstance(found, MetaData) else getattr(found, "metadata", None)
    if not isinstance(metadata, MetaData):
        spec = request.config.getini("dbscope_metadata")
        _fail(
            f"dbscope_metadata = {spec!r} is a {type(found).__name__}, not a MetaData: name "
            "your declarative base or its metadata, e.g. 'myapp.models:Base.metadata'."
        )
    return metadata


@pytest.fixture(scope="session")
def dbscope_alembic_config(request: pytest.FixtureRequest) -> Path | None:
    """The alembic.ini whose migrations make the tables (dbscope_alembic_config); or None."""
    value = str(request.config.getini("dbscope_alembic_config")).strip()
    if not value:
        return None
    path = request.config.rootpath / value
    if not path.is_file():
        _fail(f"dbscope_alembic_config = {value!r}: there is no file {str(path)!r}.")
    return path


@pytest.fixture(scope="session")
def dbscope_tables(
    request: pytest.FixtureRequest,
    dbscope_url: str,
    dbscope_metadata: MetaData | None,
    dbscope_alembic_config: Path | None,
) -> Iterator[None]:
    """Create the tables once per run; drop them at the end unless --dbscope-keep-tables.

    With neither dbscope_metadata nor dbscope_alembic_config, the tables are left as they
    are: the test database must have them already.
    """
    if dbscope_metadata is None and dbscope_alembic_config is None:
        yield
        return
    with _explained("creating the tables"):
        testing.create_tables(
            dbscope_url, metadata=dbscope_metadata, alembic_config=dbscope_alembic_config
        )
    yield
    if not _flag(request.config, "dbscope_keep_tables"):
        with _explained("dropping the tables"):
            testing.drop_tables(
                dbscope_url, metadata=dbscope_metadata, alembic_config=dbscope_alembic_config
            )


@pytest.fixture(scope="session")
def dbscope_database(request: pytest.FixtureRequest, dbscope_url: str) -> Database:
    """The app's Database (dbscope_database = 'module:db'); else a new one on the test URL.

    Whatever URL it was built with, during a test it runs every unit of work in the test's
    transaction, on the test database.
    """
    found = _load(request.config, "dbscope_database")
    if found is None:
        with _explained("the test database URL"):
            database = Database(dbscope_url)
        request.config.stash[_DEFAULT_DATABASE] = database
        return database
    if not isinstance(found, Database):
        spec = request.config.getini("dbscope_database")
        _fail(
            f"dbscope_database = {spec!r} is a {type(found).__name__}, not a "
            "dbscope.Database: name the `db = Database(...)` your app uses."
        )
    return found


@pytest.fixture(scope="session")
def dbscope_app(request: pytest.FixtureRequest) -> Any:
    """The ASGI app under test (dbscope_app = 'module:app', or a function returning it)."""
    found = _load(request.config, "dbscope_app")
    if found is None:
        _fail(
            "dbscope_client needs your app: set dbscope_app = 'myapp.main:app' (the "
            "FastAPI app, or a function without arguments that returns it) in "
            "[tool.pytest.ini_options], or override the fixture dbscope_app in conftest.py."
        )
    if inspect.isfunction(found) and not _required_parameters(found):
        return found()
    return found


@pytest.fixture
def dbscope_raise_on_lazy_load(request: pytest.FixtureRequest) -> bool | None:
    """True: every lazy load raises LazyLoadError (--dbscope-raise-on-lazy-load).

    None (without the option) follows the Database's own raise_on_lazy_load setting.
    """
    return True if _flag(request.config, "dbscope_raise_on_lazy_load") else None


# -- the async fixtures, built for the plugin and loop that run the tests ----------------------


def _async_fixtures(setup: _Setup) -> ModuleType:
    """A plugin module with the async fixtures, decorated for ``setup``'s plugin and loop."""

    def fixture(
        scope: LoopScope = "function", name: str | None = None
    ) -> Callable[[_Function], _Function]:
        if setup.async_plugin == "pytest-asyncio":
            import pytest_asyncio

            decorator = pytest_asyncio.fixture(scope=scope, loop_scope=setup.loop_scope, name=name)
        else:
            decorator = pytest.fixture(scope=scope, name=name)
        return cast("Callable[[_Function], _Function]", decorator)

    engine: Any
    if setup.loop_scope == "function":
        engine = pytest.fixture(scope="session", name="dbscope_engine")(_any_loop_engine)
    else:
        engine = fixture(scope=setup.loop_scope, name="dbscope_engine")(_pooled_engine)

    @fixture()
    async def dbscope_connection(
        dbscope_engine: AsyncEngine,
        dbscope_database: Database,
        dbscope_tables: None,
        dbscope_raise_on_lazy_load: bool | None,
    ) -> AsyncIterator[AsyncConnection]:
        """The test's connection, in a transaction rolled back after the test.

        The app's Database is bound to it meanwhile: its requests and transactions run on
        this connection, and their commits and rollbacks are savepoints.
        """
        _require_asyncio()
        async with testing.rolled_back(
            dbscope_database, dbscope_engine, raise_on_lazy_load=dbscope_raise_on_lazy_load
        ) as connection:
            yield connection

    @fixture()
    async def dbscope_session(
        dbscope_connection: AsyncConnection, dbscope_database: Database
    ) -> AsyncIterator[AsyncSession]:
        """A session in the test's transaction; its commit() and rollback() are savepoints."""
        async with testing.open_session(dbscope_database) as session:
            yield session

    @fixture()
    async def dbscope_client(
        request: pytest.FixtureRequest,
        dbscope_connection: AsyncConnection,
        dbscope_database: Database,
        dbscope_app: Any,
    ) -> AsyncIterator[httpx.AsyncClient]:
        """An httpx.AsyncClient for the app, inside its lifespan, in the test's transaction."""
        if dbscope_database is request.config.stash.get(_DEFAULT_DATABASE, None):
            _fail(
                "dbscope_client needs the Database your app uses, so that the app's "
                "sessions join the test's transaction: set dbscope_database = "
                "'myapp.db:db' in [tool.pytest.ini_options], or override the fixture "
                "dbscope_database in conftest.py."
            )
        async with testing.client(dbscope_app) as client:
            yield client

    module = ModuleType("dbscope._pytest_async_fixtures")
    module.__dict__.update(
        dbscope_engine=engine,
        dbscope_connection=dbscope_connection,
        dbscope_session=dbscope_session,
        dbscope_client=dbscope_client,
    )
    return module


def _any_loop_engine(dbscope_url: str) -> Iterator[AsyncEngine]:
    """An engine on the test database that any loop may use; each test opens a connection."""
    with contextlib.ExitStack() as stack:
        with _explained("connecting to the test database"):
            engine = stack.enter_context(testing.any_loop_engine(dbscope_url))
        yield engine


async def _pooled_engine(dbscope_url: str) -> AsyncIterator[AsyncEngine]:
    """A pooled engine on the test database, built in the loop that the tests share."""
    _require_asyncio()
    with _explained("connecting to the test database"):
        # No pre-ping: a test database does not restart under a run, and the ping would be
        # one more round trip for every test.
        test_database = Database(dbscope_url, pool_pre_ping=False)
        if test_database.settings.is_memory:
            _fail(_MEMORY_DATABASE)
        await test_database.connect()
    try:
        yield test_database.engine
    finally:
        await test_database.dispose()


# -- helpers -----------------------------------------------------------------------------------


_MEMORY_DATABASE = (
    "The test database is an in-memory SQLite database, which exists only inside one "
    "connection, while the tables are made on a connection of their own: use a file, "
    "e.g. sqlite+aiosqlite:///test.db"
)


def _fail(message: str) -> NoReturn:
    pytest.fail(message, pytrace=False)


@contextlib.contextmanager
def _explained(doing: str) -> Iterator[None]:
    """Report dbscope's own errors (bad URL, server down) as a failure without traceback."""
    try:
        yield
    except DbscopeError as error:
        # `from None`: the message says it all; the chained tracebacks would bury it.
        raise pytest.fail.Exception(f"dbscope, {doing}: {error}", pytrace=False) from None


def _require_asyncio() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        _fail(
            "dbscope's fixtures need asyncio (SQLAlchemy's async engines run on asyncio "
            "only); with anyio, define an anyio_backend fixture that returns 'asyncio'."
        )


def _load(config: pytest.Config, setting: str) -> object | None:
    """The object a 'package.module:attribute' setting names, or None if it is unset."""
    spec = str(config.getini(setting)).strip()
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        _fail(f"{setting} = {spec!r} is not of the form 'package.module:attribute'.")
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise  # the module exists but fails to import something of its own
        _fail(
            f"{setting} = {spec!r}: there is no module {module_name!r} on sys.path; "
            "pytest's `pythonpath` setting (e.g. pythonpath = ['src']) adds directories."
        )
    for part in attribute.split("."):
        if not hasattr(found, part):
            _fail(f"{setting} = {spec!r}: {module_name} has no attribute {attribute!r}.")
        found = getattr(found, part)
    return found


def _required_parameters(function: Callable[..., Any]) -> list[str]:
    return [
        name
        for name, parameter in inspect.signature(function).parameters.items()
        if parameter.default is parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
    ]
