"""Lazy loads that fail loudly, naming the attribute.

Under asyncio, reading an unloaded relationship from plain ``async`` code cannot run its query
and SQLAlchemy raises ``MissingGreenlet``, often from deep inside FastAPI's response
serialization, and leaves a never-awaited coroutine behind. dbscope catches the lazy load
just before it would execute and raises :class:`LazyLoadError` naming the attribute and the
fix. Lazy loads that can run (inside ``run_sync`` or ``awaitable_attrs``) are left alone,
unless the stricter ``raise_on_lazy_load`` switch is on, which refuses every lazy load that
would emit SQL, so that an N+1 query pattern fails the test suite instead of slowing
production.

The check is a ``do_orm_execute`` listener, and a session with one builds SQLAlchemy's
ORMExecuteState for every ORM statement (about 6% of the CPU of twenty reads in a request).
So it is put on a session only where it is needed: for the whole life of a session with the
switch on, and otherwise for one statement that runs outside SQLAlchemy's greenlet, which
from async code only an implicit load (a lazy load, an expired attribute) can do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Final

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session
from sqlalchemy.util.concurrency import in_greenlet

from dbscope._exceptions import LazyLoadError

STRICT_KEY: Final = "dbscope.raise_on_lazy_load"
_EVENT: Final = "do_orm_execute"


def refuse_every_lazy_load(session: Session) -> None:
    """Check every statement of ``session`` for the rest of its life (the switch is on)."""
    event.listen(session, _EVENT, _check_lazy_load)


@contextlib.contextmanager
def lazy_loads_refused(session: Session) -> Iterator[None]:
    """Check the statement run inside this block: one outside SQLAlchemy's greenlet."""
    if event.contains(session, _EVENT, _check_lazy_load):
        yield  # the switch is on: already checked
        return
    event.listen(session, _EVENT, _check_lazy_load)
    try:
        yield
    finally:
        event.remove(session, _EVENT, _check_lazy_load)


def _check_lazy_load(state: ORMExecuteState) -> None:
    if not state.is_select:
        return
    if state.lazy_loaded_from is None:
        if state.is_column_load and not in_greenlet():
            raise LazyLoadError(_expired(state))
        return  # not a lazy load: a query, or an eager load the query asked for
    path = state.loader_strategy_path
    attribute = str(path[-1]) if path is not None else "a relationship"
    fix = f"load it with the query: .options(selectinload({attribute})) or joinedload(...)"
    if in_greenlet():  # run_sync() or awaitable_attrs: the load could run, the switch refuses it
        message = f"{attribute} is not loaded, and raise_on_lazy_load is on: {fix}."
    else:
        message = (
            f"{attribute} is not loaded, and loading it lazily cannot work in async code "
            f"(SQLAlchemy would raise MissingGreenlet): {fix}, or read it with "
            "`await obj.awaitable_attrs.<name>` (AsyncAttrs)."
        )
    raise LazyLoadError(message)


def _expired(state: ORMExecuteState) -> str:
    mapper = state.bind_mapper
    name = mapper.class_.__name__ if mapper is not None else "An object"
    return (
        f"{name}'s attributes are not loaded: expired (by session.rollback(), "
        "session.expire(), or a commit() that expires) or deferred (deferred(), load_only()), "
        "and loading them cannot work in async code (SQLAlchemy would raise MissingGreenlet). "
        "Read them before the rollback, reload the object with `await session.refresh(obj)`, "
        "read one with `await obj.awaitable_attrs.<name>`, or undefer() it in the query."
    )
