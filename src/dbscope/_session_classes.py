"""dbscope's session class over another AsyncSession subclass (SQLModel's, with ``exec()``).

``Database(url, session_class=...)`` takes a subclass of SQLAlchemy's AsyncSession; dbscope
makes, once per class, a class that is both that one and its own :class:`UnitAsyncSession`,
so that every guarantee of a unit of work holds with it: one task at a time in each method
that runs on the connection (the class's own coroutine methods included), and a synchronous
session that is also a :class:`UnitSession` (the unit's state, on-commit hooks, the lazy-load
check).
"""

from __future__ import annotations

import inspect
from typing import Any, cast

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from dbscope._async_session import GUARDED_METHODS, UnitAsyncSession, one_task_at_a_time
from dbscope._exceptions import ConfigurationError
from dbscope._session import UnitSession

_COMBINED: dict[type[AsyncSession], type[UnitAsyncSession]] = {}


def unit_session_class(given: object) -> type[UnitAsyncSession]:
    """dbscope's session class over ``given``, the ``session_class`` a Database was given.

    None or SQLAlchemy's AsyncSession give :class:`UnitAsyncSession`. A subclass of
    AsyncSession (SQLModel's, with ``exec()``) gives a class that is both: its methods, and
    those it adds, let one task at a time in, and its synchronous session is a
    :class:`UnitSession` as well as the one it names (for the unit's state, the on-commit
    hooks and the lazy-load check).

    Raises:
        ConfigurationError: ``given`` is not an AsyncSession subclass, or its
            ``sync_session_class`` is not a Session subclass.
    """
    if given is None or given is AsyncSession or given is UnitAsyncSession:
        return UnitAsyncSession
    if not isinstance(given, type) or not issubclass(given, AsyncSession):
        raise ConfigurationError(_not_a_session_class(given))
    # Made once per class: every unit's session is an instance of the same class.
    combined = _COMBINED.get(given)
    if combined is None:
        combined = _COMBINED[given] = _combined(given)
    return combined


def _not_a_session_class(given: object) -> str:
    example = "e.g. session_class=sqlmodel.ext.asyncio.session.AsyncSession for SQLModel's"
    if not isinstance(given, type):
        return (
            f"session_class={given!r} is not a class: pass the class itself, a subclass of "
            f"sqlalchemy.ext.asyncio.AsyncSession ({example}), or leave it out."
        )
    name = f"{given.__module__}.{given.__qualname__}"
    if issubclass(given, Session):
        return (
            f"session_class={name} is a synchronous Session, and dbscope's units of work are "
            f"async: pass the AsyncSession that goes with it ({example})."
        )
    return (
        f"session_class={name} is not a subclass of sqlalchemy.ext.asyncio.AsyncSession: "
        f"pass one ({example}), or leave it out."
    )


def _combined(base: type[AsyncSession]) -> type[UnitAsyncSession]:
    sync = base.sync_session_class
    if not isinstance(sync, type) or not issubclass(sync, Session):
        message = (
            f"session_class={base.__module__}.{base.__qualname__} has sync_session_class="
            f"{sync!r}, which is not a subclass of sqlalchemy.orm.Session: dbscope's sessions "
            "need one. Give the class a Session subclass there, or leave it at Session."
        )
        raise ConfigurationError(message)
    if not issubclass(sync, UnitSession):
        sync = cast("type[Session]", _subclass(UnitSession, sync, {}))
    # The class's own methods, not AsyncSession's, behind the one-task guard.
    namespace: dict[str, Any] = {
        name: one_task_at_a_time(getattr(base, name)) for name in _connection_methods(base)
    }
    namespace["sync_session_class"] = sync
    return cast("type[UnitAsyncSession]", _subclass(UnitAsyncSession, base, namespace))


def _subclass(ours: type, theirs: type, namespace: dict[str, Any]) -> type:
    """A class that is both, shown as ``UnitSession[sqlmodel.orm.session.Session]``."""
    made = type(ours.__name__, (ours, theirs), namespace)
    made.__qualname__ = f"{ours.__qualname__}[{theirs.__module__}.{theirs.__qualname__}]"
    made.__doc__ = f"dbscope's {ours.__name__} over {theirs.__module__}.{theirs.__qualname__}."
    return made


def _connection_methods(base: type[AsyncSession]) -> list[str]:
    """AsyncSession's methods that run on the connection, and the coroutine methods that
    ``base`` adds (SQLModel's ``exec()``): one task at a time may be inside them."""
    added = {
        name
        for klass in base.__mro__
        if not issubclass(AsyncSession, klass)
        for name, value in vars(klass).items()
        if not name.startswith("_") and inspect.iscoroutinefunction(value)
    }
    return sorted(added.union(GUARDED_METHODS))
