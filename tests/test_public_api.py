"""The public API: one pinned, documented ``__all__``, and an import that stays light."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import dbscope
from tests.helpers import imported_by

PUBLIC_NAMES = [
    "Attempt",
    "ClientDisconnectedError",
    "ConfigurationError",
    "ConstraintViolationError",
    "Database",
    "DatabaseSettings",
    "DatabaseUnavailableError",
    "DbscopeError",
    "Durability",
    "Health",
    "HealthCheck",
    "LazyLoadError",
    "LifecycleError",
    "NoSessionError",
    "PoolStats",
    "ReplicaStats",
    "RetriesExhaustedError",
    "RetryPolicy",
    "Retrying",
    "ServerInfo",
    "SessionSharedError",
    "StatementTimeoutError",
    "UnitOfWork",
    "UnitOfWorkEndedError",
    "UnitOptions",
]
HEAVY_PACKAGES = ("fastapi", "starlette", "pytest", "dbscope.fastapi")


def own_docstring(obj: object) -> str:
    """The docstring written for ``obj`` itself: not inherited, not made up by dataclass."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    if inspect.isclass(obj) and doc.startswith(f"{obj.__name__}("):
        return ""  # the signature that dataclasses write when there is no docstring
    return doc.strip()


def function_of(value: object) -> object:
    """The function behind a method, property, classmethod or staticmethod."""
    if isinstance(value, property):
        return value.fget
    return getattr(value, "__func__", value)


def public_members(name: str) -> list[str]:
    """The public methods and properties a public class defines itself (not pydantic's)."""
    cls = getattr(dbscope, name)
    if not inspect.isclass(cls):
        return []
    return [
        f"{name}.{member}"
        for member, value in vars(cls).items()
        if not member.startswith("_")
        and (inspect.isfunction(value) or isinstance(value, property | classmethod | staticmethod))
        and str(getattr(function_of(value), "__module__", "")).startswith("dbscope")
    ]


def test_all_is_the_pinned_sorted_list() -> None:
    """dbscope.__all__ is exactly the public names, sorted; adding one is a decision."""
    assert dbscope.__all__ == PUBLIC_NAMES
    assert sorted(PUBLIC_NAMES) == PUBLIC_NAMES


@pytest.mark.parametrize("name", PUBLIC_NAMES)
def test_every_public_name_has_a_docstring(name: str) -> None:
    """Each name in __all__ carries a docstring of its own."""
    assert own_docstring(getattr(dbscope, name))


@pytest.mark.parametrize(
    "member", [member for name in PUBLIC_NAMES for member in public_members(name)]
)
def test_every_public_method_and_property_has_a_docstring(member: str) -> None:
    """Each public method and property of a public class is documented."""
    class_name, attribute = member.split(".")
    function = function_of(vars(getattr(dbscope, class_name))[attribute])
    assert own_docstring(function), f"{member} has no docstring"


def test_importing_dbscope_imports_neither_fastapi_starlette_nor_pytest() -> None:
    """`import dbscope` in a fresh interpreter loads no FastAPI, Starlette or pytest module."""
    assert imported_by("import dbscope", *HEAVY_PACKAGES) == []


def test_a_script_transaction_imports_neither_fastapi_nor_starlette(tmp_path: Path) -> None:
    """A script that connects and runs a transaction still never loads FastAPI or Starlette."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'script.db'}"
    code = (
        "import asyncio\n"
        "from sqlalchemy import text\n"
        "import dbscope\n"
        "async def main():\n"
        f"    async with dbscope.Database({url!r}) as db:\n"
        "        async with db.transaction() as session:\n"
        "            await session.execute(text('SELECT 1'))\n"
        "asyncio.run(main())"
    )
    assert imported_by(code, *HEAVY_PACKAGES) == []
