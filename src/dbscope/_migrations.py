"""Alembic, run the one way every part of dbscope runs it.

``dbscope.alembic`` (env.py, ``upgrade()``, ``at_head()``), ``dbscope migrate``, the health
check and ``dbscope.testing`` all load an ``alembic.ini``, run its commands and read where a
database stands through this module, with Alembic's own API: ``Config`` and ``command`` to run,
``ScriptDirectory`` for the heads, ``MigrationContext`` for the revisions a database is at.
Alembic is imported only when one of them is called; without it, the call says what to
install.

A command runs either on a connection the caller shares (Alembic's cookbook: the
connection in ``config.attributes["connection"]``, where env.py finds it) or on a URL put
into ``sqlalchemy.url``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy.engine import URL, Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from dbscope._exceptions import ConfigurationError

if TYPE_CHECKING:
    from alembic.config import Config

INSTALL: Final = "pip install 'dbscope[alembic]'"
# Where env.py finds a connection the caller shares (Alembic's cookbook names it so).
CONNECTION: Final = "connection"
# Where env.py finds the schema of the version table when the caller knows it.
SCHEMA: Final = "dbscope.schema"


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


def load_config(path: str | Path, *, stdout: Any = None) -> Config:
    """The Alembic configuration in the file ``path``.

    Args:
        path: an ``alembic.ini``.
        stdout: where Alembic's commands write (``history``, ``current``, ``--sql``).

    Raises:
        ModuleNotFoundError: Alembic is not installed; the message has the install command.
        ConfigurationError: there is no file at ``path``.
    """
    require_alembic(f"Running the migrations of {str(path)!r}")
    from alembic.config import Config

    if not Path(path).is_file():
        message = (
            f"The Alembic configuration {str(path)!r} does not exist; give the path of your "
            "alembic.ini (create one with 'alembic init -t async migrations')."
        )
        raise ConfigurationError(message)
    return Config(str(path)) if stdout is None else Config(str(path), stdout=stdout)


def set_url(config: Config, url: URL) -> None:
    """Put ``url`` (password included) into ``sqlalchemy.url``, where env.py reads it."""
    rendered = url.render_as_string(hide_password=False)
    # Escaped for configparser's interpolation: a password may hold '%'.
    config.set_main_option("sqlalchemy.url", rendered.replace("%", "%%"))


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
    """The head revisions of the scripts ``config`` names."""
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(config).get_heads())


def current_revisions(connection: Connection, *, schema: str | None = None) -> tuple[str, ...]:
    """The revisions the version table on ``connection`` holds (in ``schema`` if given)."""
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(connection, opts={"version_table_schema": schema})
    return tuple(context.get_current_heads())


async def migration_status(
    connection: AsyncConnection, config: str | Path, *, schema: str | None = None
) -> MigrationStatus:
    """Where the database on ``connection`` stands against the migrations of ``config``.

    Reads the version table (a query) and the scripts' heads (files); changes nothing. The
    query begins a transaction on ``connection`` if none is open: the caller ends it.

    Args:
        connection: a connection to the database.
        config: the path of the ``alembic.ini``.
        schema: the schema of the version table (``POSTGRES_SCHEMA``); default the
            connection's ``search_path``.

    Raises:
        ModuleNotFoundError: Alembic is not installed; the message has the install command.
        ConfigurationError: there is no file at ``config``.
    """
    heads = head_revisions(load_config(config))
    current = await connection.run_sync(current_revisions, schema=schema)
    return MigrationStatus(current=current, heads=heads)
