"""One obvious way per job: the same unit options at every entry point, one retry policy,
no private class in a public signature, and integrations that hold no Database alive."""

import gc
import inspect
import typing
import weakref
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import pytest

import dbscope
import dbscope.fastapi
from dbscope import ConfigurationError, Database, RetryPolicy, UnitOptions

UNIT_OPTIONS = {field.name for field in fields(UnitOptions)}
ENTRY_POINTS = ["session_with", "transaction", "retrying", "stream", "stream_response", "parallel"]


def classes_in(annotation: object) -> list[type]:
    """Every class an annotation names, through generics and unions."""
    if isinstance(annotation, type):
        return [annotation]
    return [found for arg in typing.get_args(annotation) for found in classes_in(arg)]


def public_callables() -> list[tuple[str, Callable[..., Any]]]:
    """The public functions of dbscope's public classes, and of dbscope.fastapi."""
    found: list[tuple[str, Callable[..., Any]]] = []
    for name in dbscope.__all__:
        cls = getattr(dbscope, name)
        for member, value in vars(cls).items() if inspect.isclass(cls) else []:
            function = value.fget if isinstance(value, property) else value
            function = getattr(function, "__func__", function)
            ours = str(getattr(function, "__module__", "")).startswith("dbscope")
            if not member.startswith("_") and inspect.isfunction(function) and ours:
                found.append((f"{name}.{member}", function))
    for name in dbscope.fastapi.__all__:
        found.append((f"dbscope.fastapi.{name}", getattr(dbscope.fastapi, name)))
    return found


@pytest.mark.parametrize(("name", "function"), public_callables())
def test_no_public_signature_returns_a_private_class(
    name: str, function: Callable[..., Any]
) -> None:
    """What a public function returns is a public class, or none of dbscope's."""
    returned = typing.get_type_hints(function).get("return")
    private = [
        cls.__qualname__
        for cls in classes_in(returned)
        if cls.__module__.startswith("dbscope") and cls.__module__ != "dbscope"
    ]
    assert private == [], f"{name} returns {private}"


@pytest.mark.parametrize("entry_point", ENTRY_POINTS)
def test_every_entry_point_takes_the_same_unit_options(entry_point: str) -> None:
    """session_with, transaction, retrying, stream, stream_response and parallel take every
    UnitOptions field as a keyword; retry documents why it takes none (the request's unit has
    them)."""
    parameters = inspect.signature(getattr(Database, entry_point)).parameters
    keywords = {name for name, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords >= UNIT_OPTIONS
    assert "the dependency's" in (Database.retry.__doc__ or "")


def test_the_fastapi_module_exports_no_builders() -> None:
    """Only what an application calls itself is public in dbscope.fastapi."""
    assert dbscope.fastapi.__all__ == [
        "ReadYourWrites",
        "add_exception_handlers",
        "health_router",
        "http_error",
        "service_unavailable",
    ]


async def test_retrying_takes_a_policy(sqlite_url: str) -> None:
    """db.retrying(policy=...) uses that policy; fields beside it are refused."""
    policy = RetryPolicy(attempts=5, backoff=0)
    async with Database(sqlite_url) as db:
        retrying = db.retrying(policy=policy)
        runs = 0
        async for attempt in retrying:
            async with attempt:
                runs += 1
        with pytest.raises(ConfigurationError, match="either policy"):
            db.retrying(policy=policy, attempts=2)
        with pytest.raises(ConfigurationError, match="either policy"):
            db.retry(policy=policy, attempts=2)
    assert retrying.policy is policy
    assert runs == 1


def test_a_schema_on_sqlite_is_refused_where_it_is_asked(sqlite_url: str) -> None:
    """schema= on a unit of a database without schemas says so, at the call."""
    db = Database(sqlite_url)
    with pytest.raises(ConfigurationError, match="no schemas"):
        db.session_with(schema="tenant")


def test_the_dependency_cache_keeps_no_database_alive(sqlite_url: str) -> None:
    """A Database whose dependencies were built is still collected when the app drops it."""
    db = Database(sqlite_url)
    assert db.session is db.session
    assert db.session_with(read_only=True) is db.read_session
    assert db.leased is db.leased
    gone = weakref.ref(db)
    del db
    gc.collect()
    assert gone() is None


def test_http_error_answers_dbscope_errors_and_refuses_any_other() -> None:
    """RetriesExhaustedError is the 409 conflict; another error is no conflict to answer
    (before: a LifecycleError, a ValueError were 409 'conflict' with their own text)."""
    conflict = dbscope.fastapi.http_error(dbscope.RetriesExhaustedError("ran out", attempts=3))
    detail: dict[str, str] = conflict.detail  # type: ignore[assignment]
    assert (conflict.status_code, detail["cause"]) == (409, "conflict")
    for error in (dbscope.LifecycleError("not connected"), ValueError("a bug")):
        with pytest.raises(TypeError, match="http_error\\(\\) answers dbscope's errors"):
            dbscope.fastapi.http_error(error)  # type: ignore[arg-type]


async def test_an_endpoint_may_return_pool_stats_and_health_as_declared(sqlite_url: str) -> None:
    """`-> PoolStats` and `-> Health` as FastAPI response types: their annotations resolve
    where they were written, though the classes show as dbscope's (before: every request
    failed, 'TypeAdapter[...PoolStats] is not fully defined')."""
    from fastapi import FastAPI

    from tests.helpers import client_for

    db = Database(sqlite_url)
    app = FastAPI(lifespan=db.lifespan)

    @app.get("/stats")
    async def stats() -> dbscope.PoolStats:
        return db.stats()

    @app.get("/health")
    async def health() -> dbscope.Health:
        return await db.health()

    async with db, client_for(app) as client:
        answers = [await client.get(path) for path in ("/stats", "/health")]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].json()["size"] == db.settings.pool_size
    assert typing.get_type_hints(dbscope.PoolStats)["replicas"] is not None
