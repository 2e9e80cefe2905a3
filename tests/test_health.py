"""Health probes over HTTP: /livez never asks the database, /readyz never waits in the
pool's line, and each answers at once whatever the server does, on the paths given; the
probe's options and paths that are refused, each named.

Every fault is real: the pool is saturated by requests that hold their connections while more
wait in line (the app served by uvicorn in a subprocess, so that the timing is a real
server's); the server becomes unreachable, or accepts and never answers, behind a TCP proxy
that is cut or silenced (helpers.TcpProxy). What db.health() answers and how often it asks
the server: tests/test_health_checks.py.
"""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

import dbscope.fastapi
import dbscope.testing
from dbscope import ConfigurationError, Database
from tests import helpers
from tests.documented import serving
from tests.health_probes import health_app, timed_get
from tests.server import running_server

# The issue's own bound on /readyz; a generous one for a probe that answers in milliseconds.
WITHIN: float = 1.0
# How long each /hold request keeps its connection at most: the test releases them (POST
# /release) once /readyz has seen the requests in line.
HOLD_SECONDS = 20.0
MEDIA_TYPE = "application/health+json"


@contextlib.asynccontextmanager
async def served_through_proxy(
    database_url: str, **options: Any
) -> AsyncIterator[tuple[helpers.TcpProxy, str]]:
    """The health router's app served by uvicorn, its Database reaching the server through a
    proxy; the proxy and the app's URL."""
    async with helpers.proxied(database_url) as (proxy, url):
        db = Database(url, connect_timeout=2)
        async with serving(health_app(db, **options)) as base_url:
            yield proxy, base_url


async def readyz_until_queued(client: httpx.AsyncClient, waiting: int) -> list[tuple[Any, float]]:
    """Poll /readyz until it sees ``waiting`` requests in line; each answer and its time."""
    answers: list[tuple[Any, float]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        started = time.perf_counter()
        response = await client.get("/readyz")
        answers.append((response, time.perf_counter() - started))
        checks = response.json()["checks"]
        if checks.get("pool:waiting", [{}])[0].get("observedValue") == waiting:
            return answers
        await asyncio.sleep(0.05)
    raise AssertionError(f"/readyz never saw {waiting} requests waiting: {answers[-1][0].text}")


# -- /readyz under load, over a real server ---------------------------------------------------


async def test_readyz_answers_warn_with_200_within_a_second_while_requests_queue(
    database_url: str,
) -> None:
    """With both connections held and two more requests in line, /readyz says warn, 200,
    within 1 s, each time it is asked (the server asked anew each time); the queued requests
    are then served."""
    env = {"DATABASE_URL": database_url, "POOL_SIZE": "2", "MAX_OVERFLOW": "0"}
    env.update(POOL_TIMEOUT="30", HEALTH_MAX_AGE="0")
    with running_server("health_app:app", env) as base_url:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
            params = {"seconds": HOLD_SECONDS}
            holders = [asyncio.create_task(client.get("/hold", params=params)) for _ in range(4)]
            answers = await readyz_until_queued(client, waiting=2)
            released = await client.post("/release")
            held = await asyncio.gather(*holders)
    response, _ = answers[-1]
    body = response.json()
    assert max(elapsed for _, elapsed in answers) < WITHIN
    assert (response.status_code, body["status"]) == (200, "warn")
    assert response.headers["content-type"] == MEDIA_TYPE
    assert body["checks"]["pool:utilization"][0]["observedValue"] == 100
    assert body["checks"]["database:responseTime"][0]["status"] == "pass"
    assert released.status_code == 200
    assert [r.status_code for r in held] == [200] * 4


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_readyz_answers_fail_with_503_once_the_server_cannot_be_reached(
    database_url: str,
) -> None:
    """After the proxy before the server is cut, /readyz answers 503 fail within 1 s."""
    async with served_through_proxy(database_url, max_age=0) as (proxy, base_url):
        before, _ = await timed_get(base_url, "/readyz")
        await proxy.cut()
        after, elapsed = await timed_get(base_url, "/readyz")
    assert (before.status_code, before.json()["status"]) == (200, "pass")
    assert (after.status_code, after.json()["status"]) == (503, "fail")
    check = after.json()["checks"]["database:responseTime"][0]
    assert check["output"] == "the database could not be reached"
    assert elapsed < WITHIN


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_readyz_answers_fail_within_a_second_when_the_server_never_answers(
    database_url: str,
) -> None:
    """A server that accepts connections and never answers costs /readyz 0.5 s, then 503."""
    async with served_through_proxy(database_url, max_age=0) as (proxy, base_url):
        proxy.silent = True
        response, elapsed = await timed_get(base_url, "/readyz")
    assert (response.status_code, response.json()["status"]) == (503, "fail")
    check = response.json()["checks"]["database:responseTime"][0]
    assert check["output"] == "the database did not answer within 0.5 s"
    assert elapsed < WITHIN


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_livez_answers_200_while_the_server_cannot_be_reached(database_url: str) -> None:
    """/livez never asks the database: with the server gone it still answers pass."""
    async with served_through_proxy(database_url) as (proxy, base_url):
        await proxy.cut()
        response, _ = await timed_get(base_url, "/livez")
        readiness, _ = await timed_get(base_url, "/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "pass"})
    assert readiness.status_code == 503


async def test_readyz_answers_fail_with_503_after_the_database_is_disposed(
    database_url: str,
) -> None:
    """Once the Database is disposed (its lifespan over), /readyz answers 503 fail."""
    db = Database(database_url)
    async with serving(health_app(db)) as base_url:
        before, _ = await timed_get(base_url, "/readyz")
        await db.dispose()
        after, _ = await timed_get(base_url, "/readyz")
    assert before.status_code == 200
    assert (after.status_code, after.json()["status"]) == (503, "fail")
    assert "was disposed" in after.json()["output"]


async def test_readyz_answers_fail_with_503_before_the_database_is_connected(
    database_url: str,
) -> None:
    """An app whose Database never connected is not ready; it is alive."""
    db = Database(database_url)
    async with serving(health_app(db, lifespan=False)) as base_url:
        readiness, _ = await timed_get(base_url, "/readyz")
        liveness, _ = await timed_get(base_url, "/livez")
    assert (readiness.status_code, readiness.json()["status"]) == (503, "fail")
    assert "not connected yet" in readiness.json()["output"]
    assert liveness.status_code == 200


async def test_both_probes_answer_health_json_that_no_one_may_cache(sqlite_url: str) -> None:
    """/livez and /readyz answer application/health+json with Cache-Control: no-store."""
    async with serving(health_app(Database(sqlite_url))) as base_url:
        answers = [(await timed_get(base_url, path))[0] for path in ("/livez", "/readyz")]
    assert [r.headers["content-type"] for r in answers] == [MEDIA_TYPE] * 2
    assert [r.headers["cache-control"] for r in answers] == ["no-store"] * 2


async def test_both_probes_answer_head_as_get_without_a_body(sqlite_url: str) -> None:
    """HEAD /livez and HEAD /readyz (load balancers' probes): GET's status and headers, no body."""
    async with dbscope.testing.client(health_app(Database(sqlite_url))) as client:
        for path in ("/livez", "/readyz"):
            got, head = await client.get(path), await client.head(path)
            assert (head.status_code, head.content) == (200, b""), path
            assert head.headers["content-type"] == got.headers["content-type"] == MEDIA_TYPE
            assert head.headers["cache-control"] == "no-store"
            assert int(head.headers["content-length"]) > 0


async def test_the_probes_answer_on_the_paths_given(sqlite_url: str) -> None:
    """liveness_path and readiness_path move the probes; the default paths are gone."""
    app = health_app(Database(sqlite_url), liveness_path="/alive", readiness_path="/ready")
    async with serving(app) as base_url:
        statuses = [(await timed_get(base_url, p))[0].status_code for p in ("/alive", "/ready")]
        default, _ = await timed_get(base_url, "/readyz")
    assert statuses == [200, 200]
    assert default.status_code == 404


@pytest.mark.parametrize("db_backend", helpers.SERVER_BACKENDS)
async def test_readyz_over_two_databases_answers_the_worse_naming_each(
    database_url: str, sqlite_url: str
) -> None:
    """health_router(db, billing): /readyz asks both; one disposed makes it 503 fail, each
    check names its Database by pool_name, and the output says which failed, naming no host
    or database."""
    db = Database(database_url, pool_name="app")
    billing = Database(sqlite_url, pool_name="billing")
    app = FastAPI()
    app.include_router(dbscope.fastapi.health_router(db, billing))
    async with db, billing, dbscope.testing.client(app) as client:
        before = await client.get("/readyz")
        await billing.dispose()
        after = await client.get("/readyz")
    named = {check["componentId"] for check in before.json()["checks"]["database:responseTime"]}
    assert (before.status_code, before.json()["status"]) == (200, "pass")
    assert named == {"app", "billing"}
    assert (after.status_code, after.json()["status"]) == (503, "fail")
    assert after.json()["output"].startswith("billing: ")
    assert "app:" not in after.json()["output"]
    for where in (make_url(database_url).host, make_url(database_url).database, sqlite_url):
        assert str(where) not in before.text + after.text


@pytest.mark.parametrize("names", [(None, "billing"), ("app", "app")])
def test_several_databases_without_pool_names_of_their_own_are_refused_by_the_health_router(
    sqlite_url: str, names: tuple[str | None, str | None]
) -> None:
    """Their checks could not be told apart without naming a host: the router is refused,
    naming pool_name."""
    databases = [Database(sqlite_url, pool_name=name) for name in names]
    with pytest.raises(ConfigurationError, match="pool_name of its own"):
        dbscope.fastapi.health_router(*databases)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"timeout": 0}, "timeout=0"),
        ({"timeout": -1.5}, "timeout=-1.5"),
        ({"timeout": float("inf")}, "timeout=inf"),
        ({"timeout": "1"}, "timeout='1'"),
        ({"max_age": -1}, "max_age=-1"),
        ({"migrations": "missing/alembic.ini"}, "migrations='missing/alembic.ini'"),
    ],
)
async def test_unusable_probe_options_are_refused_naming_the_value(
    sqlite_url: str, options: dict[str, Any], named: str
) -> None:
    """db.health() and health_router() refuse each unusable option with its value."""
    db = Database(sqlite_url)
    with pytest.raises(ConfigurationError, match=f"^{named} ") as from_health:
        await db.health(**options)
    with pytest.raises(ConfigurationError, match=f"^{named} "):
        dbscope.fastapi.health_router(db, **options)
    assert "e.g." in str(from_health.value) or "alembic.ini" in str(from_health.value)


@pytest.mark.parametrize(
    ("liveness", "readiness", "named"),
    [
        ("livez", "/readyz", "liveness_path='livez'"),
        ("/livez", "", "readiness_path=''"),
        ("/livez", "/livez", "'/livez'"),
    ],
)
def test_unusable_probe_paths_are_refused_when_the_router_is_built(
    sqlite_url: str, liveness: str, readiness: str, named: str
) -> None:
    """A path without its leading '/', or one path for both probes, fails at build time."""
    db = Database(sqlite_url)
    with pytest.raises(ConfigurationError, match=named):
        dbscope.fastapi.health_router(db, liveness_path=liveness, readiness_path=readiness)


def test_a_router_over_something_else_than_a_database_is_refused_when_built(
    sqlite_url: str,
) -> None:
    """health_router(db.health), or a name, was taken, and every /readyz then answered 500;
    beside a Database it was an AttributeError."""
    db = Database(sqlite_url, pool_name="app")
    for given in ((db.health,), ("app",), (db, "billing")):
        with pytest.raises(ConfigurationError, match="takes the app's Database objects") as refused:
            dbscope.fastapi.health_router(*given)
        assert repr(given[-1]) in str(refused.value)
