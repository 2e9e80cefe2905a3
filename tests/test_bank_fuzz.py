"""Schemathesis fuzzes the example bank (examples/bank) from its OpenAPI schema: no request
may get a 5xx.

Each operation gets up to 50 generated requests, valid and invalid, sent over HTTP to the
bank under a real uvicorn process (an in-process client would raise the app's exception in
the test instead of showing the 500 a client receives), on each database in turn. Each answer
must not be a 5xx and must match the response schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import anyio
import pytest
import schemathesis
from examples.bank.app import Base, app, open_accounts
from hypothesis import settings
from schemathesis import checks

from dbscope import Database
from tests import helpers
from tests.conftest import BACKENDS, url_for
from tests.server import running_server

pytestmark = pytest.mark.server

ACCOUNTS = 10
BALANCE = 100_000


@pytest.fixture(scope="module", params=BACKENDS)
def bank_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The base URL of the bank under uvicorn, its accounts opened; its tables dropped after."""
    database_url = url_for(str(request.param), tmp_path_factory.mktemp("bank"))
    anyio.run(opened, database_url)
    try:
        with running_server("examples.bank.app:app", {"DATABASE_URL": database_url}) as url:
            yield url
    finally:
        anyio.run(dropped, database_url)


async def opened(database_url: str) -> None:
    """The bank's tables, made anew, with their accounts."""
    async with Database(database_url) as db:
        await open_accounts(db, ACCOUNTS, BALANCE)


async def dropped(database_url: str) -> None:
    """No bank left behind."""
    async with helpers.admin(database_url) as connection:
        await connection.run_sync(Base.metadata.drop_all)


# The schema comes from the app object: no server is needed to collect the tests, one per
# operation; each sends its requests to the running bank.
api = schemathesis.openapi.from_dict(app.openapi())


# The deadline is far above a request's usual milliseconds: it flags a request that hangs,
# not a busy machine. Examples bound the run: a few seconds per database.
@settings(max_examples=50, deadline=timedelta(seconds=5), database=None)
@api.parametrize()
def test_no_generated_request_gets_a_server_error(
    case: schemathesis.Case[Any], bank_url: str
) -> None:
    """Generated requests, valid and invalid, get 2xx or 4xx answers that match the schema."""
    case.call_and_validate(
        base_url=bank_url,
        checks=[checks.not_a_server_error, checks.response_schema_conformance],
        timeout=10,
    )
