"""``/livez`` and ``/readyz``: Kubernetes' probes, in ``application/health+json``."""

import asyncio
from pathlib import Path
from typing import Any, Final, Protocol

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from dbscope._exceptions import ConfigurationError
from dbscope._health import DEFAULT_MAX_AGE, DEFAULT_TIMEOUT, ProbeOptions
from dbscope._health_report import Health
from dbscope._settings import DatabaseSettings

MEDIA_TYPE: Final = "application/health+json"
# A probe's answer is true for this instant only: no proxy or client may reuse it.
HEADERS: Final = {"Cache-Control": "no-store"}


class HealthSource(Protocol):
    """What the router asks of the Database: ``health()`` and, where it answers for several,
    its ``settings``' pool_name (the Database, seen from below it)."""

    @property
    def settings(self) -> DatabaseSettings:
        """The Database's settings (see ``Database.settings``)."""
        ...

    async def health(
        self,
        *,
        migrations: str | Path | None = None,
        timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 - Database.health's own signature
        max_age: float = DEFAULT_MAX_AGE,
    ) -> Health:
        """The Database's health (see ``Database.health``)."""
        ...


class HealthResponse(JSONResponse):
    """A JSON response in ``application/health+json``, never cached."""

    media_type = MEDIA_TYPE

    def __init__(self, content: dict[str, Any], status_code: int = 200) -> None:
        super().__init__(content, status_code=status_code, headers=HEADERS)


def health_router(
    db: HealthSource,
    *more: HealthSource,
    liveness_path: str = "/livez",
    readiness_path: str = "/readyz",
    migrations: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    max_age: float = DEFAULT_MAX_AGE,
) -> APIRouter:
    """The probes of a Kubernetes deployment: ``app.include_router(health_router(db))``.

    ``GET /livez`` answers ``{"status": "pass"}`` with 200 as long as the app answers at
    all: it never touches the database, so a database outage never gets the app restarted.
    ``GET /readyz`` answers ``await db.health(...)``: 200 for ``pass`` and ``warn`` (a
    saturated pool), 503 for ``fail``, within ``timeout`` even when every connection is in use
    and requests wait in line for one. Both answer ``application/health+json`` with
    ``Cache-Control: no-store``, and ``HEAD`` as ``GET`` without the body (load balancers and
    uptime checkers probe with HEAD). Leave them out of the OpenAPI schema with
    ``app.include_router(health_router(db), include_in_schema=False)``.

    With several Databases (``health_router(db, billing)``), ``/readyz`` asks them all at
    once and answers the worst of their statuses; each check carries its Database's
    ``pool_name`` as ``componentId`` (each needs one: the body names no host or database).

    Args:
        db: the app's Database.
        more: the app's other Databases, if any; then every Database needs a ``pool_name``
            of its own.
        liveness_path: where the liveness probe answers.
        readiness_path: where the readiness probe answers.
        migrations: an ``alembic.ini``: ``/readyz`` fails until the database (the first, ``db``)
            is at its head revisions (Alembic is needed; the scripts are read once, at the
            first probe).
        timeout: seconds after which an unanswered database probe counts as ``fail``.
        max_age: seconds for which one reading of the server answers every probe.

    Raises:
        ConfigurationError: ``db`` or one of ``more`` is no Database, a path does not start
            with ``/`` or both are the same, a number is not usable, ``migrations`` names no
            file, or one of several Databases has no ``pool_name`` of its own.
        ModuleNotFoundError: ``migrations`` is given and Alembic is not installed.
    """
    _check_paths(liveness_path, readiness_path)
    sources = _named((db, *more))
    options = ProbeOptions(timeout=timeout, max_age=max_age, migrations=migrations)
    if migrations is not None:
        from dbscope._migrations import require_alembic

        require_alembic(f"health_router(migrations={str(migrations)!r})")
    return _router(liveness_path, readiness_path, sources, options)


def _router(
    liveness_path: str, readiness_path: str, sources: dict[str, HealthSource], options: ProbeOptions
) -> APIRouter:
    """The two probes' routes, GET and HEAD each."""
    router = APIRouter()
    readiness: dict[int | str, dict[str, Any]] = {
        200: {"description": "pass or warn"},
        503: {"description": "fail"},
    }

    @router.get(liveness_path, response_class=HealthResponse, summary="Liveness probe")
    async def livez() -> HealthResponse:
        """200 while the app answers; never asks the database."""
        return HealthResponse({"status": "pass"})

    @router.get(
        readiness_path,
        response_class=HealthResponse,
        responses=readiness,
        summary="Readiness probe",
    )
    async def readyz() -> HealthResponse:
        """The database's health: 503 when it cannot serve, 200 otherwise."""
        health = await _health_of(sources, options)
        return HealthResponse(health.to_dict(), status_code=health.http_status)

    # Load balancers and uptime checkers probe with HEAD: the same answer, whose body the
    # server leaves out. Out of the OpenAPI schema, where it would repeat GET's operation id.
    for path, endpoint in ((liveness_path, livez), (readiness_path, readyz)):
        router.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
    return router


def _check_paths(liveness_path: str, readiness_path: str) -> None:
    for name, path in (("liveness_path", liveness_path), ("readiness_path", readiness_path)):
        if not isinstance(path, str) or not path.startswith("/"):
            message = f"{name}={path!r} must be a path starting with '/', e.g. '/livez'."
            raise ConfigurationError(message)
    if liveness_path == readiness_path:
        message = (
            f"liveness_path and readiness_path are both {liveness_path!r}; they answer different "
            "questions (is the app alive, can it serve): give them different paths."
        )
        raise ConfigurationError(message)


def _named(sources: tuple[HealthSource, ...]) -> dict[str, HealthSource]:
    """``sources`` by pool_name; one Database alone needs none."""
    for source in sources:
        # Anything else (db.health, the app, a name) was taken, and every /readyz was a 500.
        if not callable(getattr(source, "health", None)) or not hasattr(source, "settings"):
            message = (
                f"health_router() takes the app's Database objects (health_router(db)), "
                f"not {source!r}."
            )
            raise ConfigurationError(message)
    if len(sources) == 1:
        return {"": sources[0]}
    names = [source.settings.pool_name for source in sources]
    if None in names or len(set(names)) < len(names):
        message = (
            f"health_router() over several Databases names each one's checks by its pool_name "
            f"(the body names no host or database), and got {names}: give each Database a "
            "pool_name of its own, e.g. Database(url, pool_name='billing')."
        )
        raise ConfigurationError(message)
    return {name: source for name, source in zip(names, sources, strict=True) if name}


async def _health_of(sources: dict[str, HealthSource], options: ProbeOptions) -> Health:
    """The health of one Database, or of several asked at once, each check named."""

    async def one(source: HealthSource, migrations: str | Path | None) -> Health:
        return await source.health(
            migrations=migrations, timeout=options.timeout, max_age=options.max_age
        )

    first, *others = sources.values()
    if not others:
        return await one(first, options.migrations)
    # The migrations are the first Database's: another has a project of its own.
    answers = await asyncio.gather(
        one(first, options.migrations), *(one(other, None) for other in others)
    )
    return Health.together(dict(zip(sources, answers, strict=True)))
