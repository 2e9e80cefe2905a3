"""What a request's SQL comments say of it: the route it matched, as a template, and its
endpoint; and the request id, which goes elsewhere (see ``request_id``).

sqlcommenter names these as for Flask: ``route`` is the template the router matched
(``/notes/{note_id}``, never the concrete path, which would give every request a statement
text of its own), ``controller`` the route's name (its endpoint function's, unless named),
``framework`` ``fastapi:<version>``.
"""

from typing import Any, Final

import fastapi
from starlette.requests import Request
from starlette.types import Scope

FRAMEWORK: Final = f"fastapi:{fastapi.__version__}"


def request_tags(scope: Scope) -> dict[str, str]:
    """The tags of the request of ``scope``: ``framework``, and once a route matched,
    ``route`` (its template) and ``controller`` (its name)."""
    tags = {"framework": FRAMEWORK}
    route = _served_route(scope)
    template = getattr(route, "path_format", None)
    if isinstance(template, str) and template:
        tags["route"] = template
    name = getattr(route, "name", None)
    if isinstance(name, str) and name:
        tags["controller"] = name
    return tags


def _served_route(scope: Scope) -> Any:
    # FastAPI keeps a route of an included router as it was declared (scope["route"]), without
    # the prefixes include_router() adds; the route as served, prefixes included, is in its
    # own part of the scope. Routes of a mounted application are as that application sees
    # them: the mount's prefix may hold values (/tenants/{tenant}), so it is left out.
    fastapi_scope = scope.get("fastapi")
    if isinstance(fastapi_scope, dict):
        served = fastapi_scope.get("effective_route_context")
        if served is not None:
            return served
    return scope.get("route")


def request_id(request: Request, header: str | None) -> str | None:
    """The request's id, from its ``header`` (the ``request_id_header`` setting); None
    without one.

    It never goes into the SQL text: a value per request there makes asyncpg prepare every
    statement again (an extra round trip each). PostgreSQL shows it as ``application_name``.
    """
    return None if header is None else request.headers.get(header)
