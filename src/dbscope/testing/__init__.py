"""Test helpers for any test runner: a database of the run's own, one rolled-back
transaction per test, HTTP included (docs/testing.md). The pytest plugin is a thin layer of
fixtures over them; they serve unittest or a script as well::

    with own_database(URL, metadata=Base.metadata) as test_url:   # URL's name, then _test
        with any_loop_engine(test_url) as engine:
            # in each test, inside its event loop:
            async with rolled_back(db, engine):            # db = the app's Database
                async with client(app) as http:            # the app's lifespan runs
                    await http.post("/notes", json={...})  # commits become savepoints
            # everything the test and the app wrote is gone here
    # the run's database is gone here; the one URL names is as it was

and counts the statements a block sends, to catch an N+1::

    async with assert_queries(db, at_most=2):              # or count_queries(db) as log
        await http.get("/authors")

and the ``on_commit`` callbacks that raised, which production only logs::

    with failed_callbacks() as failed:
        await http.post("/orders", json={...})
    failed.check()                                         # OnCommitError, tracebacks and all

It imports neither pytest nor httpx (:func:`client` imports httpx when called).
"""

from dbscope._public import present_as
from dbscope.testing._asgi import client, running_app
from dbscope.testing._callbacks import (
    FailedCallback,
    FailedCallbacks,
    OnCommitError,
    failed_callbacks,
)
from dbscope.testing._isolation import (
    any_loop_engine,
    create_tables,
    drop_tables,
    open_session,
    rolled_back,
)
from dbscope.testing._own_database import DatabaseSetupError, OptionNames, own_database
from dbscope.testing._own_tables import own_tables
from dbscope.testing._queries import (
    Counting,
    LoggedStatement,
    QueryCounter,
    QueryCountError,
    QueryLog,
    assert_queries,
    count_queries,
)

__all__ = [
    "Counting",
    "DatabaseSetupError",
    "FailedCallback",
    "FailedCallbacks",
    "LoggedStatement",
    "OnCommitError",
    "OptionNames",
    "QueryCountError",
    "QueryCounter",
    "QueryLog",
    "any_loop_engine",
    "assert_queries",
    "client",
    "count_queries",
    "create_tables",
    "drop_tables",
    "failed_callbacks",
    "open_session",
    "own_database",
    "own_tables",
    "rolled_back",
    "running_app",
]

# Tracebacks and help() name the public module, not the private one a helper lives in.
present_as(__name__, globals(), __all__)
