"""What a server says of its place in streaming replication, as the backends read it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# The sizes of a WAL page's header (MAXALIGNed): the long one opens each segment.
PAGE_HEADER: Final = 24
SEGMENT_HEADER: Final = 40


@dataclass(frozen=True)
class Replication:
    """One server's place in streaming replication.

    Attributes:
        cluster: the cluster's identity, shared by a primary and its physical replicas
            (PostgreSQL's system identifier); "" when the server does not say.
        replica: whether the server is a replica (in recovery), not a primary.
        position: a replica's replayed position, or a primary's current one, in bytes.
    """

    cluster: str
    replica: bool
    position: int | None


@dataclass(frozen=True)
class Standbys:
    """Whether a commit waits for a standby server: what the primary says of itself.

    Attributes:
        setting: the server's list of synchronous standbys (empty: commits never wait).
        commit: the level a commit waits for (PostgreSQL's ``synchronous_commit``).
        in_sync: standbys connected that a commit waits for now; None when the user may not
            see them.
        connected: standbys connected, whether a commit waits for them or not.
    """

    setting: str
    commit: str
    in_sync: int | None
    connected: int = 0


def lsn_bytes(text: str) -> int:
    """A log sequence number (``16/B374D848``) as a position in bytes."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def record_end(position: int, page: int, segment: int) -> int:
    """An insert position as the end of the last record written before it.

    Where the last record ended exactly at a page's end, the insert position is past the next
    page's header, where the next record will start; a replica that has replayed everything
    reports the page's end, short of it, until some other record is written (measured: about
    1 commit in 1000, whose reads then waited for nothing and went to the primary).
    """
    if position % segment == SEGMENT_HEADER:
        return position - SEGMENT_HEADER
    if position % page == PAGE_HEADER:
        return position - PAGE_HEADER
    return position


def lsn_text(position: int) -> str:
    """A position in bytes as a log sequence number."""
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"
