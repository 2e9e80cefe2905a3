"""The FastAPI dependencies of a Database: the request's unit of work, and its leased
connection. The other units of work are ``_entry_points.py``'s; both are bases of
:class:`~dbscope.Database`.

``dbscope.fastapi`` is imported only when a dependency is first asked for, so that ``import
dbscope`` never imports FastAPI.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

from dbscope._async_session import SessionT
from dbscope._dialects import SynchronousCommit
from dbscope._entry_points import UnitEntryPoints
from dbscope._exceptions import ConfigurationError
from dbscope._streams import checked_body, streamed
from dbscope._unit_options import DEFAULT_OPTIONS, IsolationLevel

if TYPE_CHECKING:
    from starlette.responses import StreamingResponse

    from dbscope._database import Database


class RequestEntryPoints(UnitEntryPoints[SessionT]):
    """The FastAPI dependencies of :class:`~dbscope.Database`."""

    def _database(self) -> Database[SessionT]:
        # Only Database has these bases; the dependencies take the whole of it.
        return cast("Database[SessionT]", self)

    @property
    def session(self) -> Callable[..., Awaitable[SessionT]]:
        """The FastAPI dependency giving the request's session: ``Depends(db.session)``.

        One session per request; it commits after the endpoint returns and before the
        response is sent, and rolls back on any exception. See ``dbscope.fastapi``.
        """
        from dbscope.fastapi._dependencies import session_dependency

        return session_dependency(self._database(), DEFAULT_OPTIONS)

    @property
    def read_session(self) -> Callable[..., Awaitable[SessionT]]:
        """The FastAPI dependency for a read-only request: ``Depends(db.read_session)``.

        It never commits, and on PostgreSQL and MariaDB/MySQL its transaction is ``READ
        ONLY``, so a write fails loudly instead of being kept. It is a unit of work of its
        own, with a session of its own: in a request that also depends on ``db.session`` (a
        dependency that loads the signed-in user), write through ``db.session``'s;
        ``db.current_session()``, ``db.on_commit()`` and ``@db.retry()`` take that one,
        whichever was entered last.
        """
        return self.session_with(read_only=True)

    def session_with(
        self,
        *,
        read_only: bool = False,
        isolation_level: IsolationLevel | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
        stale_ok: bool = False,
        synchronous_commit: SynchronousCommit | None = None,
    ) -> Callable[..., Awaitable[SessionT]]:
        """A FastAPI session dependency with per-request options (see ``transaction()``).

        ``Depends(db.session_with(statement_timeout=2))`` cancels any statement of the request
        that runs longer than 2 s (504); ``isolation_level="SERIALIZABLE"`` runs the request's
        transaction at that level (with ``@db.retry()`` on the endpoint to re-run it after a
        conflict). With replicas, a read-only request reads one that has the writes its client
        made before (docs/replicas.md); ``stale_ok=True`` takes any ready replica;
        ``synchronous_commit="remote_apply"`` answers only once the synchronous standbys show
        the request's writes (docs/failover.md). The same
        options give the same dependency object, so all uses within one request share one
        session.
        """
        from dbscope.fastapi._dependencies import session_dependency

        options = self._options(
            read_only, isolation_level, statement_timeout, schema, stale_ok, synchronous_commit
        )
        return session_dependency(self._database(), options)

    def stream_response(
        self,
        body: Callable[[SessionT], AsyncIterator[Any]],
        *,
        media_type: str | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        read_only: bool = False,
        isolation_level: IsolationLevel | None = None,
        statement_timeout: float | None = None,
        schema: str | None = None,
        tags: Mapping[str, str] | None = None,
        after: str | None = None,
        stale_ok: bool = False,
        synchronous_commit: SynchronousCommit | None = None,
    ) -> StreamingResponse:
        """A ``StreamingResponse`` of ``body``'s chunks, made in a unit of work of its own
        that opens before the response starts: ``return db.stream_response(rows)``.

        The unit takes its connection and ``rows(session)`` makes its first chunk before the
        status is sent, so an exhausted pool or a database down answers 503 with
        ``Retry-After``, as ``Depends(db.session)`` does, where
        ``StreamingResponse(db.stream(rows))`` would cut a 200 short. It commits once the
        last chunk is made, and rolls back if the client goes away or anything raises. The
        unit's options (and ``tags``, ``after``, ``stale_ok``) are ``stream()``'s, checked
        here; ``media_type``, ``status_code`` and ``headers`` are the response's.
        """
        from dbscope.fastapi._streaming import UnitStreamingResponse

        checked_body(body, "stream_response()")
        _check_status(status_code)
        options = self._options(
            read_only, isolation_level, statement_timeout, schema, stale_ok, synchronous_commit
        )
        self._opener(options, tags, after)  # checks the tags and the token now

        def chunks(route: Mapping[str, str], request_id: str | None) -> AsyncGenerator[Any, None]:
            # The request's route tags under the call's own, as a request's unit has them.
            merged = {**route, **(tags or {})} if route else tags
            return streamed(body, self._opener(options, merged, after, request_id))

        return UnitStreamingResponse(
            chunks,
            self._database().settings,
            status_code=status_code,
            headers=headers,
            media_type=media_type,
        )

    @property
    def leased(self) -> Callable[..., Awaitable[Any]]:
        """The FastAPI dependency giving a leased driver connection: ``Depends(db.leased)``.

        ``conn: Annotated[asyncpg.Connection, Depends(db.leased)]`` gets what ``db.lease()``
        gives, for the request; the connection goes back to the pool after the endpoint
        returns and before the response is sent. Outages answer 503 with ``Retry-After``, as
        for ``db.session``. Taking both in one request holds two connections.
        """
        from dbscope.fastapi._dependencies import lease_dependency

        return lease_dependency(self._database())


def _check_status(status_code: object) -> None:
    # Past 599 (or below 100) the server sent no response at all.
    if isinstance(status_code, bool) or not isinstance(status_code, int):
        message = f"status_code={status_code!r} is no HTTP status; give an int, e.g. 200"
        raise ConfigurationError(message)
    if not 100 <= status_code <= 599:
        message = f"status_code={status_code!r} is no HTTP status: give one of 100 to 599"
        raise ConfigurationError(message)
