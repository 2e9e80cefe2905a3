"""Write tokens: where in the primary's log a client's acknowledged writes are.

After a unit of work that wrote commits, dbscope reads the primary's log position on the same
connection; a :class:`WriteToken` is that position with the cluster it belongs to. A read
that carries the token goes to a replica only once the replica has replayed the log that far,
so it sees the write (read-your-writes). The tokens a request or a script has seen are kept in
a :class:`TokenJar`, one per context, keyed by cluster: two Databases on one cluster share
their log and so a token, two clusters never mix.

A token is data, not authority: a garbled one is ignored, one further than the primary's
log is ignored once the primary says so (``Replicas._written``), and the unknown position
costs its bearer reads from the primary, nothing else. :func:`parse_tokens` reads them from a
cookie or header, ignoring what it cannot read and what is too long to be honest.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import Final

# At most this many tokens (clusters) are read from one header or cookie, and no longer text;
# and a request's jar holds at most this many clusters.
MAX_TOKENS: Final = 8
MAX_TEXT: Final = 512
# A position no replica reaches: the token of a write whose position could not be read after
# its commit, which sends the reads that follow it to the primary.
UNKNOWN_POSITION: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class WriteToken:
    """A position in one cluster's log, in bytes; written ``<cluster>:<position in hex>``."""

    cluster: str
    position: int

    def __str__(self) -> str:
        return f"{self.cluster}:{self.position:X}"

    @classmethod
    def parse(cls, text: str) -> WriteToken | None:
        """The token ``text`` writes, or None if it is not one."""
        cluster, separator, position = text.strip().partition(":")
        # ASCII only: int() and isdigit() take other scripts' digits, which would be echoed.
        if not (separator and f"{cluster}{position}".isascii()):
            return None
        if not (cluster.isdigit() and position.isalnum()):
            return None
        try:
            value = int(position, 16)
        except ValueError:
            return None
        return cls(cluster, value) if 0 <= value < 1 << 64 else None


def parse_tokens(text: str) -> list[WriteToken]:
    """The tokens in a comma-separated header or cookie value; unreadable ones are skipped."""
    if len(text) > MAX_TEXT:
        return []
    tokens = (WriteToken.parse(part) for part in text.split(",")[:MAX_TOKENS])
    return [token for token in tokens if token is not None]


class TokenJar:
    """The latest write token of each cluster seen in one request or context.

    A token of an unknown position (:data:`UNKNOWN_POSITION`) is later than any, but stands
    only until a position read after it was kept: that one was read after the unknown write
    had committed, so it is at least as far along the log, and replaces it.

    Attributes:
        changed: a token was added since the jar was made (a response must carry it).
    """

    __slots__ = ("_adds", "_tokens", "_unknown_at", "changed")

    def __init__(self, tokens: list[WriteToken] | None = None) -> None:
        """A jar of ``tokens``, a request's: of at most MAX_TOKENS clusters, the first seen,
        however many headers and cookies brought them (each echoed back on a write)."""
        self._tokens: dict[str, WriteToken] = {}
        # By cluster, the add that kept its unknown position (0: the request brought it).
        self._unknown_at: dict[str, int] = {}
        self._adds = 0
        for token in tokens or ():
            if token.cluster in self._tokens or len(self._tokens) < MAX_TOKENS:
                self._keep(token, None)
        self.changed = False

    def mark(self) -> int:
        """Where the jar is now: given to :meth:`add` with a position read after this call."""
        return self._adds

    def add(self, token: WriteToken, read_since: int | None = None) -> None:
        """Keep ``token`` if it is later than the one of its cluster, or if that one is
        unknown and ``token``'s position was read since it was kept (``read_since``, the
        :meth:`mark` taken before reading it)."""
        self._adds += 1
        if self._keep(token, read_since):
            self.changed = True

    def get(self, cluster: str) -> WriteToken | None:
        """The latest token of ``cluster``, if any."""
        return self._tokens.get(cluster)

    def render(self) -> str:
        """Every token, comma-separated: what a cookie or header carries."""
        return ",".join(str(token) for token in self._tokens.values())

    def _keep(self, token: WriteToken, read_since: int | None) -> bool:
        cluster = token.cluster
        kept = self._tokens.get(cluster)
        if token.position == UNKNOWN_POSITION:
            # The latest unknown write is the one a known position must be read after.
            self._unknown_at[cluster] = self._adds
        elif kept is not None and kept.position >= token.position:
            unknown_at = self._unknown_at.get(cluster)
            if unknown_at is None or read_since is None or read_since < unknown_at:
                return False
            del self._unknown_at[cluster]
        if kept == token:
            return False
        self._tokens[cluster] = token
        return True


# This context's jar: a request's, set by ReadYourWrites (fastapi/_read_your_writes.py).
JAR: ContextVar[TokenJar | None] = ContextVar("dbscope_write_tokens", default=None)


def current_jar(*, create: bool = False) -> TokenJar | None:
    """The jar of this context; with ``create``, a new one set here if there is none."""
    jar = JAR.get()
    if jar is None and create:
        jar = TokenJar()
        JAR.set(jar)
    return jar
