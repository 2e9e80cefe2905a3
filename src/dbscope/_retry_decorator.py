"""``@db.retry()``: the retry loop of ``_retry.py`` over the request's own unit of work, run by
the endpoint it decorates, and refused where it would keep what it should not (a function
that is not its request's endpoint, a route that serves it without the decorator).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any, Final
from weakref import WeakSet

from dbscope._errors import violated_at_commit
from dbscope._exceptions import ConfigurationError, NoSessionError
from dbscope._retry import P, Retrying, RetryPolicy, T
from dbscope._unit import UnitOfWork

# A retried function that is not its request's endpoint: each attempt's commit would keep
# the work its caller did before it, whatever the caller does after.
NOT_THE_ENDPOINT: Final = (
    "{name} is decorated with db.retry() but is not the endpoint of the request whose unit of "
    "work it runs in (a function the endpoint calls, or one called in db.transaction()): its "
    "commit would keep its caller's work before the caller had finished, even if it then "
    "failed. Put @db.retry() on the endpoint, below the route decorator (functions decorated "
    "inside it then run once per attempt), or retry in a unit of its own with "
    "`async for attempt in db.retrying(): ...`."
)
OUTSIDE_A_UNIT: Final = (
    "{name} is decorated with db.retry() but runs outside a unit of work: make the endpoint "
    "depend on db.session (a `Session` parameter, or dependencies=[Depends(db.session)])."
)


def _others(unit: UnitOfWork) -> list[UnitOfWork]:
    """The request's other units that write (``Depends(billing.session)``). A read-only one
    (``Depends(db.read_session)`` in an auth dependency) keeps nothing across attempts:
    rolling it back would only expire what the dependency loaded, and its reads before the
    endpoint leave a conflict retryable, as a header read would."""
    return [
        other
        for other in unit.request_units or ()
        if other is not unit and not other.state.begin.read_only
    ]


async def _rolled_back(unit: UnitOfWork) -> None:
    # The other Databases' work of a failed attempt goes with the retried one's: the next
    # attempt writes it again (it was kept once per attempt, and a conflict in one of them
    # left its transaction failed for every attempt after).
    await unit.session.rollback()
    for other in _others(unit):
        await other.session.rollback()


@contextlib.asynccontextmanager
async def _in_request_unit(unit: UnitOfWork) -> AsyncIterator[UnitOfWork]:
    # One attempt of a decorated endpoint: its work is committed here (unless the unit will
    # not commit), so that a conflict at COMMIT is retried too, and rolled back before the
    # next attempt. The other Databases' units commit at the request's end, as without it.
    try:
        yield unit
    except BaseException:
        await _rolled_back(unit)
        raise
    if not unit.will_commit:  # the unit rolls back at its end (an error status, read-only)
        return
    try:
        await unit.session.commit()
    except BaseException as error:
        await _rolled_back(unit)
        # As the unit's own commit would: a constraint failing here answers 409, not 500.
        violated = violated_at_commit(error, unit.state.rules)
        if violated is None:
            raise
        raise violated from error


def _refuse_unawaitable(function: Callable[..., object], name: str) -> None:
    """Refuse a function whose call is no awaitable that does its work: a plain ``def`` or
    an async generator (under any decorators that wrap it), with which every request would
    fail. A partial, a bound method or a callable object is taken on trust, as FastAPI
    takes it."""
    innermost = inspect.unwrap(function)
    if inspect.isasyncgenfunction(innermost):
        kind = (
            "an async generator, whose work runs as it is iterated, after db.retry() has "
            "returned it. Make it return instead"
        )
    elif inspect.isfunction(innermost) and not inspect.iscoroutinefunction(innermost):
        kind = "a plain function. Make it `async def`"
    else:
        return
    message = (
        f"db.retry() decorates async functions (endpoints written `async def` that return); "
        f"{name} is {kind}, or retry inside it with `async for attempt in db.retrying(): ...`."
    )
    raise ConfigurationError(message)


# Each function db.retry() decorated, as it was before: a route that runs one of these runs
# it without its retries (the decorator was put above the route's, which took the function).
_UNDECORATED: WeakSet[Callable[..., Any]] = WeakSet()


def refuse_misordered(endpoint: Callable[..., Any] | None) -> None:
    """Raise ConfigurationError if a request's ``endpoint`` is a function db.retry()
    decorated, served without the decorator."""
    if endpoint is not None and endpoint in _UNDECORATED:
        name = getattr(endpoint, "__qualname__", repr(endpoint))
        message = (
            f"{name} is decorated with db.retry(), but its route serves it without: the "
            "decorator is above the route decorator, which registered the function as it "
            "was. Put @db.retry() below @app.post(...) (the route decorator first)."
        )
        raise ConfigurationError(message)


def _runs_as(endpoint: Callable[..., Any] | None, retried: Callable[..., Any]) -> bool:
    """Whether ``endpoint`` is ``retried``, under any decorators that wrap it
    (``functools.wraps``), bound as a method, given as a ``functools.partial``, or as the
    ``__call__`` of a callable object, as FastAPI takes them all."""
    seen: set[int] = set()
    while endpoint is not None and id(endpoint) not in seen:
        if endpoint is retried:
            return True
        seen.add(id(endpoint))
        if isinstance(endpoint, functools.partial):
            endpoint = endpoint.func
        elif inspect.ismethod(endpoint):
            endpoint = endpoint.__func__
        elif hasattr(endpoint, "__wrapped__"):
            endpoint = endpoint.__wrapped__
        elif not inspect.isfunction(endpoint) and callable(endpoint):
            endpoint = type(endpoint).__call__
        else:
            endpoint = None
    return False


def retry_in_unit(
    current: Callable[[], UnitOfWork | None],
    policy: RetryPolicy,
    on_retry: Callable[[], object] | None = None,
) -> Callable[[Callable[P, Awaitable[T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Decorate an async function (an endpoint) to re-run it in the current unit of work.

    What a conflict is, is the running unit's backend's verdict (its ``state.rules``), not
    the rules of when the decorator was applied: a Database bound to a test's connection
    runs its units by that connection's rules.
    """

    def decorate(function: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        name = getattr(function, "__qualname__", repr(function))
        _refuse_unawaitable(function, name)
        with contextlib.suppress(TypeError):  # one that takes no weak reference: not checked
            _UNDECORATED.add(function)

        @functools.wraps(function)
        async def retried(*args: P.args, **kwargs: P.kwargs) -> T:
            unit = current()
            if unit is None:
                raise NoSessionError(OUTSIDE_A_UNIT.format(name=name))
            if unit.retried:  # inside another retried function: its loop runs this again
                return await function(*args, **kwargs)
            if not _runs_as(unit.endpoint, retried):
                raise ConfigurationError(NOT_THE_ENDPOINT.format(name=name))
            results: list[T] = []
            rules = unit.state.rules
            # Statements run before the endpoint, in any Database's request unit, would not run
            # again: a conflict is then not retried (_retry.py's PRECEDED).
            preceded = any(each.session.in_transaction() for each in (unit, *_others(unit)))
            attempts = Retrying(
                lambda: _in_request_unit(unit), policy, rules, name, on_retry, preceded
            )
            unit.retried = True
            try:
                async for attempt in attempts:
                    async with attempt:
                        results.append(await function(*args, **kwargs))
            finally:
                unit.retried = False
            return results[-1]

        return retried

    return decorate
