"""Lazy loads that fail loudly, naming the attribute.

Under asyncio, reading an unloaded relationship from plain ``async`` code cannot run its query
and SQLAlchemy raises ``MissingGreenlet``, often from deep inside FastAPI's response
serialization, and leaves a never-awaited coroutine behind. dbscope catches the lazy load
just before it would execute and raises :class:`LazyLoadError` naming the attribute and the
fix. Lazy loads that can run (inside ``run_sync`` or ``awaitable_attrs``) are left alone,
unless the stricter ``raise_on_lazy_load`` switch is on, which refuses every lazy load that
would emit SQL, so that an N+1 query pattern fails the test suite instead of slowing
production.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.util.concurrency import in_greenlet

from dbscope._exceptions import LazyLoadError

STRICT_KEY: Final = "dbscope.raise_on_lazy_load"


def refuse_lazy_loads(session_class: type) -> None:
    """Install the check on ``session_class`` (done once, for dbscope's session class)."""
    event.listen(session_class, "do_orm_execute", _check_lazy_load)


def _check_lazy_load(state: ORMExecuteState) -> None:
    if not state.is_select or state.lazy_loaded_from is None:
        return  # not a lazy load: a query, or an eager load the query asked for
    if in_greenlet() and not state.session.info.get(STRICT_KEY):
        return  # run_sync() or awaitable_attrs: the load can run, and was asked for
    path = state.loader_strategy_path
    attribute = str(path[-1]) if path is not None else "a relationship"
    fix = f"load it with the query: .options(selectinload({attribute})) or joinedload(...)"
    if in_greenlet():
        message = f"{attribute} is not loaded, and raise_on_lazy_load is on: {fix}."
    else:
        message = (
            f"{attribute} is not loaded, and loading it lazily cannot work in async code "
            f"(SQLAlchemy would raise MissingGreenlet): {fix}, or read it with "
            "`await obj.awaitable_attrs.<name>` (AsyncAttrs)."
        )
    raise LazyLoadError(message)
