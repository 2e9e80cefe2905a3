"""Read-your-writes across requests: a client's write tokens, carried from one request to
the next in a cookie (browsers) and a header (API clients)."""

from __future__ import annotations

import re
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dbscope._exceptions import ConfigurationError
from dbscope._settings import HEADER_NAME
from dbscope._write_tokens import JAR, TokenJar, WriteToken, parse_tokens

DEFAULT_COOKIE: Final = "dbscope_writes"
DEFAULT_HEADER: Final = "Dbscope-Writes"
DEFAULT_MAX_AGE: Final = 60
# An hour: a read needs its token for the milliseconds a replica takes to replay the write.
MOST_MAX_AGE: Final = 3600
# A comma is no cookie-octet (RFC 6265), so in the cookie the tokens are separated by dots
# (no token holds one: ``<digits>:<hex>``); the header keeps the comma-separated list.
COOKIE_SEPARATOR: Final = "."
# A cookie path: visible ASCII but ';', starting with '/'.
_PATH: Final = re.compile(r"/[\x21-\x3a\x3c-\x7e]*")


class ReadYourWrites:
    """Pure ASGI middleware: a client reads its own writes in its next requests.

    ``app.add_middleware(ReadYourWrites)``. After a request's unit of work commits on the
    primary, dbscope keeps the primary's log position as a write token of the request. On the
    response, this middleware hands the tokens to the client twice: in a cookie
    (``HttpOnly; SameSite=Lax``, ``max_age`` seconds), which a browser sends back, so that
    POST, redirect, GET reads the write; and in the response header ``header_name``, which an
    API client echoes in its next requests. The tokens a request brings (cookie and header)
    become the request's own: each of its read-only units (``Depends(db.read_session)``,
    ``db.transaction(read_only=True)``, ...) runs on a replica only once that replica has
    replayed them, else on the primary.

    Tokens are kept by cluster: one cookie and one header carry those of every Database of
    the app (two Databases on two clusters: two tokens, side by side). A token is data, not
    authority: a garbled or oversized one is ignored, and so is one further than the
    primary's log (checked with one query on the primary when it is further than the app
    knows); the unknown position (``FFFFFFFFFFFFFFFF``) costs its client reads from the
    primary, nothing else. A request that commits nothing gets no cookie and no header.

    The tokens are added when the response starts. A streamed response whose unit of work
    commits after that (a ``db.transaction()`` inside the body's generator) cannot carry its
    token: the client's next reads may not see that write. WebSocket and lifespan messages
    pass through untouched.

    Args:
        app: the ASGI app to wrap (``add_middleware`` passes it).
        cookie_name: the cookie's name.
        header_name: the request and response header's name.
        max_age: seconds the browser keeps the cookie, and so the client's reads wait for
            its writes; replicas replay a write in milliseconds, so keep it short.
        secure: send the cookie over HTTPS only (``Secure``); set it in production.
        path: the paths the browser sends the cookie to.

    Raises:
        ConfigurationError: an option is not a usable value (its name and value said).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        cookie_name: str = DEFAULT_COOKIE,
        header_name: str = DEFAULT_HEADER,
        max_age: int = DEFAULT_MAX_AGE,
        secure: bool = False,
        path: str = "/",
    ) -> None:
        _check_name("cookie_name", cookie_name, DEFAULT_COOKIE)
        _check_name("header_name", header_name, DEFAULT_HEADER)
        _check_options(max_age, secure, path)
        self.app = app
        self.cookie_name = cookie_name
        self.header_name = header_name
        self._header_key = header_name.lower().encode("latin-1")
        attributes = f"; Max-Age={max_age}; Path={path}; HttpOnly; SameSite=Lax"
        self._attributes = attributes + ("; Secure" if secure else "")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request with the tokens it brings; add those it made to its response."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        jar = TokenJar(self._tokens(scope))

        async def send_with_tokens(message: Message) -> None:
            if message["type"] == "http.response.start" and jar.changed:
                self._hand_out(message, jar.render())
            await send(message)

        # The request's units reach the jar through the context: its writes add to it.
        context = JAR.set(jar)
        try:
            await self.app(scope, receive, send_with_tokens)
        finally:
            JAR.reset(context)

    def _tokens(self, scope: Scope) -> list[WriteToken]:
        """The tokens of the request's header and of its cookie."""
        echoed: list[str] = []
        cookies: list[str] = []
        for name, value in scope["headers"]:
            if name == self._header_key:
                echoed.append(value.decode("latin-1"))
            elif name == b"cookie":
                cookies.append(value.decode("latin-1"))
        tokens = parse_tokens(",".join(echoed)) if echoed else []
        # Every cookie of the name, not the last: one set under Path=/admin comes before one
        # under Path=/, and is the newer where both are sent; the newest position wins (the
        # jar keeps it, and at most MAX_TOKENS clusters of the whole request).
        for pair in "; ".join(cookies).split(";"):
            value = cookie_parser(pair).get(self.cookie_name)
            if value:
                tokens += parse_tokens(value.replace(COOKIE_SEPARATOR, ","))
        return tokens

    def _hand_out(self, message: Message, tokens: str) -> None:
        headers = MutableHeaders(scope=message)
        cookie = tokens.replace(",", COOKIE_SEPARATOR)
        headers.append("set-cookie", f"{self.cookie_name}={cookie}{self._attributes}")
        headers.append(self.header_name, tokens)


def _check_name(option: str, value: object, example: str) -> None:
    if isinstance(value, str) and HEADER_NAME.fullmatch(value):
        return
    message = (
        f"ReadYourWrites({option}={value!r}): a {option.split('_')[0]} name is a non-empty "
        "string of letters, digits and !#$%&'*+-.^_`|~ (no spaces, no separators such as "
        f"'=' or ';'); e.g. {option}={example!r}."
    )
    raise ConfigurationError(message)


def _check_options(max_age: object, secure: object, path: object) -> None:
    if isinstance(max_age, bool) or not isinstance(max_age, int) or max_age <= 0:
        message = (
            f"ReadYourWrites(max_age={max_age!r}): the cookie's lifetime is a whole number "
            f"of seconds, 1 or more; e.g. max_age={DEFAULT_MAX_AGE}."
        )
        raise ConfigurationError(message)
    if max_age > MOST_MAX_AGE:
        message = (
            f"ReadYourWrites(max_age={max_age!r}): at most {MOST_MAX_AGE} seconds (an hour): "
            "replicas replay a write in milliseconds, so a longer-lived cookie only makes "
            f"old writes' tokens travel; e.g. max_age={DEFAULT_MAX_AGE}."
        )
        raise ConfigurationError(message)
    if not isinstance(secure, bool):
        message = f"ReadYourWrites(secure={secure!r}): use secure=True or secure=False."
        raise ConfigurationError(message)
    if not (isinstance(path, str) and _PATH.fullmatch(path)):
        message = (
            f"ReadYourWrites(path={path!r}): a cookie path starts with '/' and holds no "
            "spaces, control characters or ';'; e.g. path='/' for the whole site."
        )
        raise ConfigurationError(message)
