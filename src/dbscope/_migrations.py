"""Alembic, run the one way every part of dbscope runs it.

``dbscope.alembic`` (env.py, ``upgrade()``, ``at_head()``), ``dbscope migrate``, the health
check and ``dbscope.testing`` all load an ``alembic.ini``, run its commands and read where a
database stands through this module, with Alembic's own API: ``Config`` and ``command`` to run,
``ScriptDirectory`` for the heads, ``MigrationContext`` for the revisions a database is at.
Alembic is imported only when one is called; without it, the call says what to install.

A command runs either on a connection the caller shares (Alembic's cookbook:
``config.attributes["connection"]``, where env.py finds it) or on ``sqlalchemy.url``'s URL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import configparser
import logging.config
import os
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar

from sqlalchemy import MetaData, inspect
from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from dbscope._dialects import backend
from dbscope._exceptions import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")
# What env.py gives Alembic as target_metadata: the models' tables, for --autogenerate.
Metadata = MetaData | Sequence[MetaData] | None

INSTALL: Final = "pip install 'dbscope[alembic]'"
# Where env.py finds what the caller tells it (config.attributes): a connection to share
# (Alembic's cookbook names it so), the schema of the version table, settings made elsewhere
# (`dbscope migrate --app` or `--prefix`), and whether to apply alembic.ini's logging (not
# when run from code, where it would replace the application's logging).
CONNECTION: Final = "connection"
SCHEMA: Final = "dbscope.schema"
SETTINGS: Final = "dbscope.settings"
CONFIGURE_LOGGER: Final = "configure_logger"
# What `alembic init` writes into alembic.ini: not a URL anyone means.
PLACEHOLDER_URL: Final = "driver://user:pass@localhost/dbname"


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database stands against its migrations.

    Attributes:
        current: the revisions the database's version table holds (empty: never migrated).
        heads: the head revisions of the migration scripts.
    """

    current: tuple[str, ...]
    heads: tuple[str, ...]

    @property
    def at_head(self) -> bool:
        """Whether the database is at every head and at nothing else."""
        return set(self.current) == set(self.heads)


def require_alembic(purpose: str) -> None:
    """Raise ModuleNotFoundError with the install command if Alembic is missing."""
    try:
        import alembic  # noqa: F401
    except ModuleNotFoundError as error:
        message = f"{purpose} needs Alembic, which is not installed: {INSTALL}"
        raise ModuleNotFoundError(message, name=error.name) from None


def config_path(path: str | Path | None = None, *, required: bool = False) -> Path:
    """The ``alembic.ini`` that :func:`upgrade`, :func:`status` and :func:`at_head` read.

    ``path`` if given, else Alembic's own default: ``$ALEMBIC_CONFIG``, else ``alembic.ini``
    in the working directory. Whether the file exists and can be read is checked if
    ``required``, always for a file ``$ALEMBIC_CONFIG`` names (one named and missing is a
    mistake, not "no migrations here"), and for the default ``alembic.ini`` when it exists.

    Args:
        path: the ``config`` given to them, if any.
        required: refuse a file that is not there, as they do (and ``dbscope check -c``,
            ``dbscope migrate -c``).

    Raises:
        ConfigurationError: there is no file where it must be, or it is no INI file; the
            message names the path as given, and the variable if it came from one, and the fix.
    """
    if path is not None:
        return require_config(path) if required else Path(path)
    named = os.environ.get("ALEMBIC_CONFIG")
    if named:
        return require_config(named, variable="ALEMBIC_CONFIG")
    default = Path("alembic.ini")
    # One that is there is read now: a file that is no INI file fails here, in one line.
    return require_config(default) if required or default.exists() else default


def load_config(path: str | Path) -> Config:
    """The Alembic configuration in the file ``path`` (and a ``pyproject.toml`` beside it,
    where Alembic's pyproject templates keep ``script_location``), for a run from code. Its
    logging sections are not applied: they would replace the application's logging (Alembic's
    CLI applies them, through env.py).

    Raises:
        ModuleNotFoundError: Alembic is not installed; the message has the install command.
        ConfigurationError: there is no file at ``path``, or it is not an INI file.
    """
    require_alembic(f"Running the migrations of {str(path)!r}")
    from alembic.config import Config

    found = require_config(path)
    pyproject = found.with_name("pyproject.toml")
    config = Config(str(found), toml_file=str(pyproject) if pyproject.is_file() else None)
    config.attributes[CONFIGURE_LOGGER] = False
    return config


def require_config(path: str | Path, *, variable: str | None = None) -> Path:
    """``path``, if it is a file configparser reads: the one check of an alembic.ini, whoever
    named it.

    Raises:
        ConfigurationError: there is no file at ``path``, or it is not an INI file; the message
            names it as given (and the environment ``variable`` that gave it) and the fix.
    """
    found = Path(path)
    named = f"The Alembic configuration {str(path)!r}"
    if variable is not None:
        named = f"{named} that {variable} names"
        fix = f"set {variable} to the path of your alembic.ini, or unset it."
    else:
        fix = (
            "give the path of your alembic.ini (create one with "
            "'alembic init -t async migrations')."
        )
    if found.is_file():
        problem = _ini_problem(found)
        if problem is None:
            return found
        message = f"{named} cannot be read as an INI file: {problem}; correct it, or {fix}"
    elif found.is_dir():
        message = f"{named} is a directory, not a file; {fix}"
    else:
        message = f"{named} does not exist; {fix}"
    raise ConfigurationError(message)


def _ini_problem(path: Path) -> str | None:
    """What keeps configparser from reading ``path`` as Alembic reads it, or None.

    Said by line number only: a line's text may hold a password (sqlalchemy.url).
    """
    try:
        configparser.ConfigParser().read(path, encoding="locale")
    except UnicodeDecodeError as error:
        return f"byte {error.start} is not {error.encoding} text"
    except configparser.MissingSectionHeaderError as error:
        return f"line {error.lineno} comes before any section header such as [alembic]"
    except configparser.ParsingError as error:
        lines = ", ".join(str(number) for number, _ in error.errors)
        return f"line {lines} is neither a section header nor 'key = value'"
    except (configparser.DuplicateSectionError, configparser.DuplicateOptionError) as error:
        what = getattr(error, "option", None) or f"[{error.section}]"
        return f"line {error.lineno} repeats {what}"
    return None


def set_url(config: Config, url: URL) -> None:
    """Put ``url`` (password included) into ``sqlalchemy.url``, where env.py reads it."""
    rendered = url.render_as_string(hide_password=False)
    # Escaped for configparser's interpolation: a password may hold '%'.
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))


def get_url(config: Config) -> str | None:
    """The ``sqlalchemy.url`` of ``config`` (its main section), as configparser reads it.

    Raises:
        ConfigurationError: configparser cannot read it: a '%' that is not written '%%'
            (a percent-encoded password's, say). The message names the file and the key,
            never the value, which holds the password.
    """
    try:
        return config.get_main_option("sqlalchemy.url")
    except configparser.InterpolationError:
        file = config.config_file_name or "the Alembic configuration"
        message = (
            f"{file!r}: sqlalchemy.url in [{config.config_ini_section}] cannot be read: "
            "alembic.ini goes through configparser's interpolation, where '%' begins a "
            "reference, so each '%' of the URL (a percent-encoded password's too) must be "
            "written '%%' ('%40' as '%%40'). Double each '%' there, or remove the line to use "
            "the application's settings (DATABASE_URL or POSTGRES_*)."
        )
        # `from None`: configparser's error quotes the value, password included.
        raise ConfigurationError(message) from None


def run_command(config: Config, name: str, *args: Any, **kwargs: Any) -> Any:
    """Run Alembic's command ``name`` (``upgrade``, ``downgrade``, ``current``...)."""
    from alembic import command

    work: Callable[..., Any] = getattr(command, name)
    return work(config, *args, **kwargs)


async def run_on_connection(
    connection: AsyncConnection,
    config: Config,
    name: str,
    *args: Any,
    schema: str | None = None,
    **kwargs: Any,
) -> Any:
    """Run the command ``name`` on ``connection``, shared with env.py (Alembic's cookbook).

    The connection should be in a transaction the caller commits (``engine.begin()``):
    env.py's own ``begin_transaction()`` then joins it.
    """

    def run(sync_connection: Connection) -> Any:
        config.attributes[CONNECTION] = sync_connection
        if schema is not None:
            config.attributes[SCHEMA] = schema
        try:
            return run_command(config, name, *args, **kwargs)
        finally:
            config.attributes.pop(CONNECTION, None)

    return await connection.run_sync(run)


def head_revisions(config: Config) -> tuple[str, ...]:
    """The head revisions of the scripts ``config`` names; ConfigurationError, in Alembic's
    words, if it names none it can read (no ``script_location``, or a missing one)."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return tuple(ScriptDirectory.from_config(config).get_heads())
    except CommandError as error:
        message = (
            f"The Alembic configuration {config.config_file_name!r} names no migration "
            f"scripts to read: {error} Set script_location in it to the directory of the "
            "migrations' env.py."
        )
        raise ConfigurationError(message) from None


def current_revisions(connection: Connection, *, schema: str | None = None) -> tuple[str, ...]:
    """The revisions the version table on ``connection`` holds (in ``schema`` if given)."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    return tuple(context.get_current_heads())


async def migration_status(
    connection: AsyncConnection, config: str | Path, *, schema: str | None = None
) -> MigrationStatus:
    """Where the database on ``connection`` stands against the migrations of ``config``.

    Reads the version table (a query) and the scripts' heads (files, in a thread); changes
    nothing. The query begins a transaction on ``connection`` if none is open: the caller
    ends it.

    Args:
        connection: a connection to the database.
        config: the path of the ``alembic.ini``.
        schema: the schema of the version table (``POSTGRES_SCHEMA``); default the
            connection's ``search_path``.

    Raises:
        ModuleNotFoundError: Alembic is not installed; the message has the install command.
        ConfigurationError: there is no file at ``config``.
    """
    # Off the event loop: Alembic reads the alembic.ini and imports every script, each call
    # (52-62 ms of the loop's CPU per call with 200 scripts).
    heads = await asyncio.to_thread(lambda: head_revisions(load_config(config)))
    current = await connection.run_sync(current_revisions, schema=schema)
    return MigrationStatus(current=current, heads=heads)


# -- what env.py runs --------------------------------------------------------------------------


def configure_logging(config: Config) -> None:
    """Apply alembic.ini's logging sections, as Alembic's templates do, unless told not to;
    loggers that exist already keep working (``disable_existing_loggers=False``)."""
    name = config.config_file_name
    if name is None or config.attributes.get(CONFIGURE_LOGGER) is False:
        return
    if config.file_config.has_section("loggers"):
        logging.config.fileConfig(name, disable_existing_loggers=False)


def migrate_on(
    connection: Connection, metadata: Metadata, /, *, schema: str | None = None, **options: Any
) -> None:
    """Run env.py's migrations on ``connection``, in its transaction.

    The connection is expected in a transaction its owner commits; Alembic then joins it.
    Where DDL commits by itself (MariaDB, MySQL) it is in none: Alembic then begins and
    commits one per revision (``_migration_lock.migrating``). With ``schema`` the version
    table is there and the migrations run with that ``search_path`` (``SET LOCAL``).
    """
    from alembic import context

    if schema is not None:
        require_schema(connection, schema)
        options = _without_version_table(schema, options)
    context.configure(
        connection=connection, target_metadata=metadata, version_table_schema=schema, **options
    )
    _run_in_transaction(schema)


def require_schema(connection: Connection, schema: str) -> None:
    """Refuse a schema the database does not have, before Alembic makes its version table there
    (before any migration runs, so no migration can make the schema): the server takes any
    name in ``search_path``, and the first statement to need it would fail in chained
    tracebacks."""
    if inspect(connection).has_schema(schema):
        return
    quoted = connection.dialect.identifier_preparer.quote(schema)  # Tenant_A with its quotes
    message = (
        f"The schema {schema!r} that the settings name (POSTGRES_SCHEMA, or Database's "
        f"schema=) does not exist in the database: create it first (CREATE SCHEMA {quoted}; "
        "by hand, e.g. in `dbscope shell`, or in your deployment's set-up), or name a schema "
        "that exists."
    )
    raise ConfigurationError(message)


def _without_version_table(schema: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with an ``include_name`` that hides the version table from autogenerate.

    Alembic leaves out of its comparison only the version table it names, ``schema``'s; under
    ``search_path`` = ``schema`` the same table is reflected with no schema, and autogenerate
    would propose dropping it. The caller's own ``include_name`` still decides the rest.
    """
    version_table = options.get("version_table", "alembic_version")
    given: Callable[[str | None, str, Mapping[str, Any]], bool] | None
    given = options.get("include_name")

    def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
        ours = parent_names.get("schema_name") in (None, schema)
        if type_ == "table" and name == version_table and ours:
            return False
        return given is None or given(name, type_, parent_names)

    return {**options, "include_name": include_name}


def migrate_offline(
    url: URL, metadata: Metadata, *, schema: str | None = None, **options: Any
) -> None:
    """Write env.py's migrations as SQL (``--sql``): no server, only the URL's dialect."""
    from alembic import context

    options = {"literal_binds": True, "dialect_opts": {"paramstyle": "named"}, **options}
    context.configure(url=url, target_metadata=metadata, version_table_schema=schema, **options)
    _run_in_transaction(schema)


def _run_in_transaction(schema: str | None) -> None:
    from alembic import context

    with context.begin_transaction():
        if schema is not None:
            dialect = context.get_context().dialect
            context.execute(backend(dialect.name).schema_statement(dialect, schema))
        context.run_migrations()


def run_coroutine(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run the coroutine ``work()`` to its end, from code with or without a running loop.

    Without one (Alembic's CLI), in this thread; with one (a synchronous Alembic command
    called from async code), in a thread with an event loop of its own, since this thread's
    loop cannot run it while it waits here.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop: run it here, outside the except block (no chained RuntimeError)
    else:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dbscope-alembic") as pool:
            return pool.submit(lambda: asyncio.run(work())).result()
    return asyncio.run(work())
