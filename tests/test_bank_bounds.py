"""The example bank (examples/bank) refuses what its tables cannot hold with a 422 naming the
field, before any SQL runs, on every database: account ids beyond `integer`, amounts beyond
`bigint`, transfer ids longer than 64 characters, with a NUL character, or not valid Unicode.
The largest values the columns hold are served as any other (404, 409, 201), never a 500."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from examples.bank.app import Base, create_app, open_accounts
from sqlalchemy import text

from dbscope import Database
from tests import helpers

INT32 = 2**31
INT64 = 2**63
ACCOUNTS = 4
BALANCE = 1000


def transfer(name: str, **fields: Any) -> bytes:
    """A JSON body for POST /transfers from account 2 to account 3, but for ``fields``.

    Written by hand so that a lone surrogate reaches the server as the JSON escape a client
    sends (``"\\ud800"``), which no UTF-8 encoder would write."""
    body = {"id": name, "source": 2, "target": 3, "amount": 1, **fields}
    return httpx.Request("POST", "/", json=body).content


# Each request, and the status and invalid field its answer must show (None: no field).
REQUESTS: list[tuple[str, bytes, int, str | None]] = [
    ("source beyond int32", transfer("a", source=INT32), 422, "source"),
    ("source beyond uint32", transfer("b", source=2**32), 422, "source"),
    ("source beyond int64", transfer("c", source=INT64), 422, "source"),
    ("source of 31 digits", transfer("d", source=10**30), 422, "source"),
    ("source negative", transfer("e", source=-1), 422, "source"),
    ("target beyond int32", transfer("f", target=2**40), 422, "target"),
    ("amount beyond int64", transfer("g", amount=INT64), 422, "amount"),
    ("amount of 31 digits", transfer("h", amount=10**30), 422, "amount"),
    ("amount zero", transfer("i", amount=0), 422, "amount"),
    ("id of 65 characters", transfer("x" * 65), 422, "id"),
    ("id of a NUL", transfer("\x00"), 422, "id"),
    ("id with a NUL", transfer("a\x00b"), 422, "id"),
    ("id ending in a space", transfer("a "), 422, "id"),
    ("one account twice", transfer("m", source=2, target=2), 422, "body"),
    ("id a lone surrogate", b'{"id": "\\ud800", "source": 2, "target": 3, "amount": 1}', 422, "id"),
    ("largest source", transfer("j", source=INT32 - 1), 404, None),
    ("largest target", transfer("k", target=INT32 - 1), 404, None),
    ("largest amount", transfer("l", amount=INT64 - 1), 409, None),
    ("id of 64 characters", transfer("x" * 64), 201, None),
    ("id of 64 two-byte characters", transfer("é" * 64), 201, None),
    ("id of 64 four-byte characters", transfer("😀" * 64), 201, None),
]


@pytest.fixture(autouse=True)
async def no_bank_left(database_url: str) -> AsyncIterator[None]:
    """The bank's tables are dropped after each test."""
    yield
    async with helpers.admin(database_url) as connection:
        await connection.run_sync(Base.metadata.drop_all)


def field_of(response: httpx.Response) -> str | None:
    """The last part of the first invalid field's location, if the answer names one."""
    detail = response.json().get("detail") if response.status_code == 422 else None
    return str(detail[0]["loc"][-1]) if isinstance(detail, list) else None


async def test_input_beyond_the_bank_columns_is_422_and_none_is_a_500(database_url: str) -> None:
    """Each request gets its status, 422s name the field; nothing moved but the 201s' money."""
    async with Database(database_url) as db, helpers.client_for(create_app(db)) as client:
        await open_accounts(db, accounts=ACCOUNTS, balance=BALANCE)
        answers = []
        for name, body, _, _ in REQUESTS:
            headers = {"content-type": "application/json"}
            response = await client.post("/transfers", content=body, headers=headers)
            answers.append((name, response.status_code, field_of(response)))
        async with db.transaction(read_only=True) as session:
            total = await session.scalar(text("SELECT sum(balance) FROM bank_accounts"))
            transfers = await session.scalar(text("SELECT count(*) FROM bank_ledger"))

    assert [answer for answer in answers if answer[1] >= 500] == []
    assert answers == [(name, status, field) for name, _, status, field in REQUESTS]
    assert (int(total or 0), transfers) == (ACCOUNTS * BALANCE, 3)


async def test_transfer_ids_that_differ_only_in_case_accent_or_spaces_are_two_transfers(
    database_url: str,
) -> None:
    """A transfer id is the client's key, compared as written: on MariaDB/MySQL too, whose
    default collation finds 'dup', 'DUP' and 'dúp' equal (before: the second was answered 409
    'already applied' and never made). The same id again is 409; one ending in a space,
    which MariaDB/MySQL would find equal to 'dup', is a 422."""
    ids = ["dup", "DUP", "dúp", " dup"]
    async with Database(database_url) as db, helpers.client_for(create_app(db)) as client:
        await open_accounts(db, accounts=ACCOUNTS, balance=BALANCE)
        statuses = []
        for name in [*ids, "dup", "dup "]:
            body = {"id": name, "source": 2, "target": 3, "amount": 1}
            statuses.append((await client.post("/transfers", json=body)).status_code)
        async with db.transaction(read_only=True) as session:
            transfers = await session.scalar(text("SELECT count(*) FROM bank_ledger"))
    assert statuses == [201, 201, 201, 201, 409, 422]
    assert transfers == len(ids)


async def test_a_transfer_to_the_same_account_is_a_422_that_echoes_nothing(
    sqlite_url: str,
) -> None:
    """The 422 names the body as invalid, with neither the account nor the validator's context
    (before: the account id in its message, and an empty ctx)."""
    async with Database(sqlite_url) as db, helpers.client_for(create_app(db)) as client:
        await open_accounts(db, accounts=ACCOUNTS, balance=BALANCE)
        body = {"id": "same", "source": 2, "target": 2, "amount": 1}
        response = await client.post("/transfers", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert set(error) == {"type", "loc", "msg"}
    assert "2" not in error["msg"]
