"""What a server says of its place in streaming replication, as the backends read it."""

from __future__ import annotations

from dataclasses import dataclass


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
