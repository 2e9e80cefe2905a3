"""The pytest plugin: every test in one transaction that is rolled back, HTTP tests included.

Registered through the ``pytest11`` entry point ``dbscope = "dbscope._pytest_plugin"`` when
dbscope is installed, and inert until a test asks for one of its fixtures, all named
``dbscope_*``. docs/testing.md describes the fixtures and the settings. The fixtures are thin
layers over :mod:`dbscope.testing` and use dbscope's public API only; this package is the
only part of dbscope that imports pytest.

pytest takes the hooks and fixtures from this module's names, so it re-exports them from:

- ``_options``: the command-line options and ini settings, and reading them;
- ``_hooks``: start-up, the header line, the loop check before each test;
- ``_loops``: which plugin (pytest-asyncio or anyio) runs the tests, in which event loop;
- ``_fixtures``: the settings as fixtures, the run's own database and its tables (made for
  the run and dropped after it, never anyone else's: :func:`dbscope.testing.own_database`);
- ``_async_fixtures``: the engine, connection, session and client, built at start-up for
  the plugin and loop of ``_loops``;
- ``_reporting``: failures without tracebacks, and the plugin's notes on the terminal.
"""

from dbscope._pytest_plugin._fixtures import (
    dbscope_alembic_config,
    dbscope_app,
    dbscope_database,
    dbscope_metadata,
    dbscope_raise_on_lazy_load,
    dbscope_run_url,
    dbscope_tables,
    dbscope_url,
)
from dbscope._pytest_plugin._hooks import (
    pytest_configure,
    pytest_report_header,
    pytest_runtest_setup,
)
from dbscope._pytest_plugin._options import pytest_addoption

__all__ = [
    "dbscope_alembic_config",
    "dbscope_app",
    "dbscope_database",
    "dbscope_metadata",
    "dbscope_raise_on_lazy_load",
    "dbscope_run_url",
    "dbscope_tables",
    "dbscope_url",
    "pytest_addoption",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_setup",
]
