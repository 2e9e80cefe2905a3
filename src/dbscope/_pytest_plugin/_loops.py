"""Which plugin runs the async tests, in which event loop, and the check before each test.

The async fixtures must run in the loop of the test that uses them, and pytest-asyncio and
anyio each run async fixtures their own way, so the plugin chooses at start-up the plugin
that runs the tests (``dbscope_async_plugin``) and the loop scope they run in
(``dbscope_loop_scope``), and builds its async fixtures for those (``_async_fixtures``).
Before a test that uses an async fixture runs, :func:`loop_problem` tells whether the test
will run in that same loop, and if not, which setting to change.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Final, Literal, cast, get_args

import pytest

LoopScope = Literal["function", "class", "module", "package", "session"]
LOOP_SCOPES: Final = get_args(LoopScope)
ASYNC_PLUGINS: Final = ("pytest-asyncio", "anyio")
ASYNC_FIXTURES: Final = ("dbscope_connection", "dbscope_session", "dbscope_client")


@dataclass(frozen=True)
class Setup:
    """How this run's async fixtures are built: which plugin runs them, in which loop."""

    async_plugin: str
    loop_scope: LoopScope

    @property
    def async_fixtures(self) -> tuple[str, ...]:
        """The fixtures that must share the test's loop (the engine too, when it is pooled)."""
        if self.loop_scope == "function":
            return ASYNC_FIXTURES
        return (*ASYNC_FIXTURES, "dbscope_engine")


SETUP = pytest.StashKey[Setup]()


def choose(config: pytest.Config) -> Setup:
    """The plugin and the loop scope this run's tests use, from the settings."""
    plugin = _async_plugin(config)
    return Setup(async_plugin=plugin, loop_scope=_loop_scope(config, plugin))


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
        chosen = default_test_loop_scope(config)
    chosen = chosen or "function"
    if chosen not in LOOP_SCOPES:
        message = f"dbscope_loop_scope = {chosen!r}: use one of {', '.join(LOOP_SCOPES)}."
        raise pytest.UsageError(message)
    return cast("LoopScope", chosen)


def default_test_loop_scope(config: pytest.Config) -> str:
    """pytest-asyncio's asyncio_default_test_loop_scope (an ini key since 0.24)."""
    try:
        return str(config.getini("asyncio_default_test_loop_scope") or "function")
    except ValueError:
        return "function"


def loop_problem(item: pytest.Function, setup: Setup, used: str) -> str | None:
    """Why ``item`` would run in another loop than the fixtures it uses (``used``); or None."""
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
    default = default_test_loop_scope(item.config)
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
