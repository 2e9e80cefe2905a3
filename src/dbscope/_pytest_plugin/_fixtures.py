"""The synchronous fixtures: the settings, the run's own database and its tables.

Each setting is a session fixture that a project may override in its conftest.py (an app
built by a factory, a URL computed at run time). The run's database and its tables are
:func:`dbscope.testing.own_database` and :func:`dbscope.testing.own_tables`, which say in
their messages the plugin's settings. The async fixtures are in ``_async_fixtures``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final, NoReturn

import pytest
from sqlalchemy import MetaData

from dbscope import Database, testing
from dbscope._pytest_plugin._options import flag, url_setting, worker_id
from dbscope._pytest_plugin._reporting import explained, fail, phased, say
from dbscope._urls import parse_url

DEFAULT_DATABASE = pytest.StashKey[Database]()
# How the messages of dbscope.testing name the URL and the options: as the settings do.
NAMES: Final = testing.OptionNames(
    url="dbscope_url",
    reuse="--dbscope-reuse-db",
    keep="--dbscope-keep-tables",
    use_existing_tables="--dbscope-use-existing-tables (dbscope_use_existing_tables = true)",
)


class MaskedUrl(str):
    """A database URL, the str to connect with, whose repr hides its password: pytest
    prints a failed test's arguments by their repr (and its variables, with -l)."""

    __slots__ = ()

    def __repr__(self) -> str:
        try:
            url = parse_url(str(self))
        except ValueError:  # ConfigurationError, or parse_url's: text that is no URL
            return "'<a database URL dbscope refuses>'"
        return repr(url.render_as_string(hide_password=True))


def _names(config: pytest.Config) -> testing.OptionNames:
    """NAMES, with the URL named by the setting that gave it (dbscope_url if overridden)."""
    return dataclasses.replace(NAMES, url=url_setting(config)[1] or "dbscope_url")


# -- the settings ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dbscope_url(request: pytest.FixtureRequest) -> str:
    """The database the test database is named after: --dbscope-url, $DBSCOPE_TEST_URL, ini."""
    url = url_setting(request.config)[0]
    if not url:
        fail(
            "dbscope needs a database to name the test database after (it runs the tests in "
            "name_test, which it creates and drops). Name it with --dbscope-url=URL, or the "
            "environment variable DBSCOPE_TEST_URL, or dbscope_url = 'URL' in "
            "[tool.pytest.ini_options] of pyproject.toml, or override the session-scoped "
            "fixture dbscope_url in conftest.py. For example: "
            "postgresql+asyncpg://postgres@localhost/test or sqlite+aiosqlite:///test.db"
        )
    return MaskedUrl(url)


@pytest.fixture(scope="session")
def dbscope_metadata(request: pytest.FixtureRequest) -> MetaData | None:
    """The tables to create, from dbscope_metadata ('module:Base.metadata'); None if unset."""
    found = _load(request.config, "dbscope_metadata")
    if found is None:
        return None
    metadata = found if isinstance(found, MetaData) else getattr(found, "metadata", None)
    if not isinstance(metadata, MetaData):
        advice = "name your declarative base or its metadata, e.g. 'myapp.models:Base.metadata'."
        _not_a(request.config, "dbscope_metadata", found, "MetaData", advice)
    return metadata


@pytest.fixture(scope="session")
def dbscope_alembic_config(request: pytest.FixtureRequest) -> Path | None:
    """The alembic.ini whose migrations make the tables (dbscope_alembic_config); or None."""
    value = str(request.config.getini("dbscope_alembic_config")).strip()
    if not value:
        return None
    path = request.config.rootpath / value
    if not path.is_file():
        fail(f"dbscope_alembic_config = {value!r}: there is no file {str(path)!r}.")
    return path


@pytest.fixture(scope="session")
def dbscope_database(request: pytest.FixtureRequest, dbscope_run_url: str) -> Database:
    """The app's Database (dbscope_database = 'module:db'); else a new one on the test URL.

    Whatever URL it was built with, during a test it runs every unit of work in the test's
    transaction, in the test database.
    """
    found = _load(request.config, "dbscope_database")
    if found is None:
        with explained("the test database URL"):
            database = Database(dbscope_run_url)
        request.config.stash[DEFAULT_DATABASE] = database
        return database
    if not isinstance(found, Database):
        advice = "name the `db = Database(...)` your app uses."
        _not_a(request.config, "dbscope_database", found, "dbscope.Database", advice)
    return found


@pytest.fixture(scope="session")
def dbscope_app(request: pytest.FixtureRequest) -> Any:
    """The ASGI app under test (dbscope_app = 'module:app', or a function returning it)."""
    found = _load(request.config, "dbscope_app")
    if found is None:
        fail(
            "dbscope_client needs your app: set dbscope_app = 'myapp.main:app' (the "
            "FastAPI app, or a function without arguments that returns it) in "
            "[tool.pytest.ini_options], or override the fixture dbscope_app in conftest.py."
        )
    if inspect.isfunction(found) and _takes_no_arguments(found):
        found = found()
    if not callable(found):  # no ASGI app, nor a function making one: failed in each test
        advice = "name the FastAPI app (or a function without arguments that returns it)."
        _not_a(request.config, "dbscope_app", found, "ASGI app", advice)
    return found


@pytest.fixture
def dbscope_raise_on_lazy_load(request: pytest.FixtureRequest) -> bool | None:
    """True: every lazy load raises LazyLoadError (--dbscope-raise-on-lazy-load).

    None (without the option) follows the Database's own raise_on_lazy_load setting.
    """
    return True if flag(request.config, "dbscope_raise_on_lazy_load") else None


# -- the run's database and its tables ---------------------------------------------------------


@pytest.fixture(scope="session")
def dbscope_run_url(
    request: pytest.FixtureRequest,
    dbscope_url: str,
    dbscope_metadata: MetaData | None,
    dbscope_alembic_config: Path | None,
) -> Iterator[str]:
    """The URL of the database the tests run in: the run's own, named after dbscope_url.

    Made when the run begins and dropped when it ends (:func:`dbscope.testing.own_database`);
    under pytest-xdist, one per worker (``name_test_gw0``), made and dropped by the worker.
    Without dbscope_metadata or dbscope_alembic_config the plugin makes no tables, so it
    makes no database either: the tests run in dbscope_url's database, which must have them.
    """
    if dbscope_metadata is None and dbscope_alembic_config is None:
        yield MaskedUrl(dbscope_url)
        return
    config = request.config
    app = _app_database(config)
    own = testing.own_database(
        dbscope_url,
        reuse=flag(config, "dbscope_reuse_db"),
        keep=flag(config, "dbscope_keep_tables"),
        report=functools.partial(say, config),
        names=_names(config),
        worker=worker_id(config),
        pgbouncer=None if app is None else app.settings.pgbouncer,
        # dbscope_tables makes them: a kept database is reused only for the same tables.
        tables_from=dbscope_metadata if dbscope_alembic_config is None else None,
    )
    for url in phased(own, "setting up the test database", "dropping the test database"):
        yield MaskedUrl(url)


@pytest.fixture(scope="session")
def dbscope_tables(
    request: pytest.FixtureRequest,
    dbscope_run_url: str,
    dbscope_metadata: MetaData | None,
    dbscope_alembic_config: Path | None,
) -> Iterator[None]:
    """Create the app's tables once per run, refusing to run on tables dbscope did not make.

    With neither dbscope_metadata nor dbscope_alembic_config, the tables are left as they
    are: the test database must have them already.
    """
    if dbscope_metadata is None and dbscope_alembic_config is None:
        yield
        return
    config = request.config
    app = _app_database(config)
    tables = testing.own_tables(
        dbscope_run_url,
        metadata=dbscope_metadata,
        alembic_config=dbscope_alembic_config,
        keep=flag(config, "dbscope_keep_tables"),
        reuse=flag(config, "dbscope_reuse_db"),
        use_existing_tables=flag(config, "dbscope_use_existing_tables"),
        report=functools.partial(say, config),
        names=_names(config),
        pgbouncer=None if app is None else app.settings.pgbouncer,
    )
    yield from phased(tables, "creating the tables", "dropping the tables")


def _app_database(config: pytest.Config) -> Database | None:
    """The app's Database (dbscope_database), if set: the connections that set up the run's
    database go through PgBouncer as its ``pgbouncer`` setting says, before it is built."""
    found = _load(config, "dbscope_database")
    return found if isinstance(found, Database) else None


# -- loading what the settings name ------------------------------------------------------------


def _load(config: pytest.Config, setting: str) -> object | None:
    """The object a 'package.module:attribute' setting names, or None if it is unset."""
    spec = str(config.getini(setting)).strip()
    if not spec:
        return None
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        fail(f"{setting} = {spec!r} is not of the form 'package.module:attribute'.")
    try:
        found: object = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or ""
        if not (module_name == missing or module_name.startswith(f"{missing}.")):
            # The module exists, and fails to import something of its own: `import stripe` in
            # stripe_webhooks.main is not that module missing, though its name begins with it.
            raise
        found = None  # said below, outside this block: pytest would show the import's error
    if found is None:
        fail(
            f"{setting} = {spec!r}: there is no module {module_name!r} on sys.path; "
            "pytest's `pythonpath` setting (e.g. pythonpath = ['src']) adds directories."
        )
    for part in attribute.split("."):
        if not hasattr(found, part):
            fail(f"{setting} = {spec!r}: {module_name} has no attribute {attribute!r}.")
        found = getattr(found, part)
    return found


def _not_a(config: pytest.Config, setting: str, found: object, kind: str, advice: str) -> NoReturn:
    spec = config.getini(setting)
    fail(f"{setting} = {spec!r} is a {type(found).__name__}, not a {kind}: {advice}")


def _takes_no_arguments(function: Callable[..., Any]) -> bool:
    """Whether ``function`` can be called with none (an app factory's)."""
    return not any(
        parameter.default is parameter.empty
        and parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD)
        for parameter in inspect.signature(function).parameters.values()
    )
