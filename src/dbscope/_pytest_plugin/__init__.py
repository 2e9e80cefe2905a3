"""The pytest plugin: every test in one transaction that is rolled back, HTTP tests included.

Registered through the ``pytest11`` entry point when dbscope is installed, and inert until a
test asks for one of its fixtures, all named ``dbscope_*`` (docs/testing.md). The fixtures
are thin layers over :mod:`dbscope.testing` and use dbscope's public API only; this package
is the only part of dbscope that imports pytest. pytest takes the hooks and fixtures from
this module's names: the options (``_options``), the hooks (``_hooks``) and the fixtures
(``_fixtures``; the async ones in ``_async_fixtures``, built at start-up for the plugin and
event loop ``_loops`` chooses), which speak through ``_reporting``; the query counts (the
``dbscope_queries`` fixture and marker) are ``_queries``; an ``on_commit`` callback that
raises fails its test (``_callbacks``).
"""

from dbscope._pytest_plugin._callbacks import pytest_runtest_makereport, pytest_runtest_protocol
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
    pytest_assertrepr_compare,
    pytest_configure,
    pytest_report_header,
    pytest_runtest_setup,
    pytest_terminal_summary,
    pytest_testnodedown,
)
from dbscope._pytest_plugin._options import pytest_addoption
from dbscope._pytest_plugin._queries import dbscope_queries, pytest_runtest_call

__all__ = [
    "dbscope_alembic_config",
    "dbscope_app",
    "dbscope_database",
    "dbscope_metadata",
    "dbscope_queries",
    "dbscope_raise_on_lazy_load",
    "dbscope_run_url",
    "dbscope_tables",
    "dbscope_url",
    "pytest_addoption",
    "pytest_assertrepr_compare",
    "pytest_configure",
    "pytest_report_header",
    "pytest_runtest_call",
    "pytest_runtest_makereport",
    "pytest_runtest_protocol",
    "pytest_runtest_setup",
    "pytest_terminal_summary",
    "pytest_testnodedown",
]
