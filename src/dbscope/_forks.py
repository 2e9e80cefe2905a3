"""A process forked after a Database connected (``gunicorn --preload``, a prefork task queue)
lets go of the pools it inherited, without closing their connections: their sockets are the
parent's too, and a child that used them (or closed them, as ``dispose()`` does) would speak
in the parent's conversations with the server. SQLAlchemy's ``engine.dispose(close=False)``,
which its docs prescribe after a fork, for each pool connected at the fork.
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class Pooled(Protocol):
    """What owns a pool (``_lifecycle.Lifecycle``)."""

    def let_go_of_pool(self) -> None:
        """Replace the pool with an empty one, leaving its connections untouched."""


connected: weakref.WeakSet[Pooled] = weakref.WeakSet()
"""The owners of a pool connected now: ``add()`` at connect, ``discard()`` at dispose."""


def _let_go_of_inherited_pools() -> None:
    for pooled in list(connected):
        pooled.let_go_of_pool()


os.register_at_fork(after_in_child=_let_go_of_inherited_pools)
