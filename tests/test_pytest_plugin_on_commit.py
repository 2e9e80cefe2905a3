"""``on_commit`` callbacks that raise under the pytest plugin, run by pytest on small projects:
they fail the test they ran in (a request's, a ``db.transaction()`` block's, a unit's in a
task of its own), naming the callback with its traceback; a marked test lets them raise, and
callbacks that succeed change nothing; on every database and under both async plugins.
"""

from __future__ import annotations

import re

import pytest

from tests.documented import block_containing

from .plugin_projects import ASYNC_PLUGINS, run, settings_ini, write_project

# The project's tests, with an endpoint of their own on the app: it writes a row and
# registers a callback that "mails" about it, refused for names that begin "unmailable".
CALLBACK_TESTS = """
import asyncio
import contextvars
import functools
from typing import Annotated

import pytest
from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession

from plugin_app import Item, app, db

pytestmark = MARK
MAILED = []


def mail(name):
    if name.startswith("unmailable"):
        raise ConnectionError(f"the mail server refused the mail about {name}")
    MAILED.append(name)


async def mail_later(name):
    await asyncio.sleep(0)
    mail(name)


@app.post("/mailed/{name}")
async def add_and_mail(name: str, session: Annotated[AsyncSession, Depends(db.session)]) -> None:
    session.add(Item(name=name))
    db.on_commit(functools.partial(mail, name))


async def test_a_request_whose_callback_raises(dbscope_client):
    response = await dbscope_client.post("/mailed/unmailable-request")
    assert response.status_code == 200


async def test_a_transaction_whose_async_callback_raises(dbscope_connection):
    async with db.transaction() as session:
        session.add(Item(name="unmailable-transaction"))
        db.on_commit(functools.partial(mail_later, "unmailable-transaction"))


async def test_a_unit_in_a_task_of_its_own_whose_callback_raises(dbscope_connection):
    async def write():
        async with db.transaction() as session:
            session.add(Item(name="unmailable-task"))
            db.on_commit(lambda: mail("unmailable-task"))

    # In a context of its own, as a task the app's lifespan started would be.
    await asyncio.get_running_loop().create_task(write(), context=contextvars.Context())


@pytest.mark.dbscope_allow_on_commit_errors
async def test_an_expected_failure(dbscope_client, caplog):
    response = await dbscope_client.post("/mailed/unmailable-expected")
    failed = [record for record in caplog.records if record.name == "dbscope"]
    assert response.status_code == 200
    assert [type(record.exc_info[1]) for record in failed] == [ConnectionError]


async def test_callbacks_that_succeed(dbscope_client):
    response = await dbscope_client.post("/mailed/ada")
    assert response.status_code == 200
    assert MAILED == ["ada"]
"""


TEARDOWN_TESTS = (
    CALLBACK_TESTS.split("\n\nasync def test_")[0]
    + """


async def test_the_sessions_callback_raises_at_its_end(dbscope_session):
    dbscope_session.add(Item(name="unmailable-session"))
    db.on_commit(functools.partial(mail, "unmailable-session"))
    await dbscope_session.commit()


async def test_two_callbacks_raise_in_a_test_that_fails_on_its_own(dbscope_client):
    await dbscope_client.post("/mailed/unmailable-first")
    await dbscope_client.post("/mailed/unmailable-second")
    assert MAILED == ["first"]
"""
)
RAISED = "raised ConnectionError: the mail server refused the mail about"


@pytest.mark.parametrize("async_plugin", ASYNC_PLUGINS)
def test_a_callback_that_raises_fails_its_test_naming_it(
    pytester: pytest.Pytester, project_url: str, async_plugin: str
) -> None:
    """A request's, a transaction's and another task's unit's callback that raises each fail
    their test, naming it, with its traceback from the callback's frame; the marked test and
    the one whose callback succeeds pass."""
    write_project(pytester, async_plugin, CALLBACK_TESTS)

    result = run(pytester, async_plugin, project_url, "--strict-markers", in_process=True)

    result.assert_outcomes(passed=2, failed=3)
    lambda_name = (
        "test_project.test_a_unit_in_a_task_of_its_own_whose_callback_raises.<locals>.write."
        "<locals>.<lambda> (test_project.py:48)"
    )
    for test, callback, frame, name in [
        (
            "a_request",
            "functools.partial(test_project.mail, 'unmailable-request')",
            "mail",
            "request",
        ),
        (
            "a_transaction",
            "functools.partial(test_project.mail_later, 'unmailable-transaction')",
            "mail_later",
            "transaction",
        ),
        ("a_unit_in_a_task_of_its_own", lambda_name, "<lambda>", "task"),
    ]:
        result.stdout.fnmatch_lines(
            [
                f"FAILED test_project.py::test_{test}_whose_*callback_raises*",
            ]
        )
        result.stdout.fnmatch_lines(
            [
                f"The on_commit callback {callback} {RAISED} unmailable-{name}.",
                "It ran after the commit: in production the error is only logged (the "
                "`dbscope` logger), and the commit stands.",
                "",
                "Traceback (most recent call last):",
                f'  File "*test_project.py", line *, in {frame}',
                "*",
                '  File "*test_project.py", line 18, in mail' if frame != "mail" else "*",
                "*",
                "If the test expects it, mark it @pytest.mark.dbscope_allow_on_commit_errors: "
                "the error is then only logged, as in production, and caplog has it.",
            ]
        )
    # dbscope's own frame that called the callback is in the log, not in the failure.
    failures = result.stdout.str().split("= FAILURES =")[1]
    assert "_commit_hooks.py" not in "".join(
        report.split("Captured log call")[0] for report in failures.split("\n____")
    )


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
def test_callbacks_of_the_teardown_fail_it_and_a_failed_test_keeps_its_own_error(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """dbscope_session's callback, run at its end, fails the tear-down; a test that failed on
    its own keeps its assertion as the failure, with its two callbacks in a section."""
    write_project(pytester, "pytest-asyncio", TEARDOWN_TESTS)

    result = run(pytester, "pytest-asyncio", project_url, in_process=True)

    result.assert_outcomes(passed=1, failed=1, errors=1)
    result.stdout.fnmatch_lines(["ERROR test_project.py::test_the_sessions_callback_raises_at_*"])
    result.stdout.fnmatch_lines(["FAILED test_project.py::test_two_callbacks_raise_in_a_test_*"])
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_the_sessions_callback_raises_at_its_end*",
            f"The on_commit callback functools.partial(test_project.mail, 'unmailable-session') "
            f"{RAISED} unmailable-session.",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E       AssertionError: assert [] == ['first']",
            "*- dbscope: on_commit callbacks that raised -*",
            f"2 on_commit callbacks raised: functools.partial(test_project.mail, "
            f"'unmailable-first') {RAISED} unmailable-first; functools.partial(*",
            "They ran after the commit:*",
        ]
    )


GUIDE = "docs/testing.md"
# The guide's app: an order is written, and a confirmation mailed after its commit, by a
# mail server that is down.
ORDERS_APP = """
import functools
from typing import Annotated

from fastapi import Depends, FastAPI
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlalchemy.ext.asyncio import AsyncSession

from dbscope import Database

metadata = MetaData()
orders = Table(
    "ptp_orders",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("item", String(50)),
)
db = Database("postgresql+asyncpg://nobody@127.0.0.1:9/production")
app = FastAPI(lifespan=db.lifespan)


def mail_confirmation(order_id):
    raise ConnectionError("the mail server is down")


@app.post("/orders", status_code=201)
async def order(body: dict, session: Annotated[AsyncSession, Depends(db.session)]) -> dict:
    placed = insert(orders).values(item=body["item"]).returning(orders.c.id)
    order_id = (await session.execute(placed)).scalar_one()
    db.on_commit(functools.partial(mail_confirmation, order_id))
    return {"id": order_id}
"""


@pytest.mark.parametrize("db_backend", ["sqlite", "asyncpg"])
def test_the_guides_marked_test_passes_and_fails_as_shown_without_its_marker(
    pytester: pytest.Pytester, project_url: str
) -> None:
    """The guide's test passes with its marker; without it, it fails with the message the
    guide shows."""
    marked = block_containing(GUIDE, "@pytest.mark.dbscope_allow_on_commit_errors")
    shown = block_containing(GUIDE, "The on_commit callback functools.partial(", language="text")
    pytester.makepyfile(**{"myapp/__init__": "", "myapp/main": ORDERS_APP})
    pytester.makefile(
        ".ini",
        pytest=settings_ini(
            "dbscope_app = myapp.main:app",
            "dbscope_database = myapp.main:db",
            "dbscope_metadata = myapp.main:metadata",
            "asyncio_mode = auto",
        ),
    )
    tests = pytester.mkdir("tests")
    (tests / "test_orders.py").write_text(marked)
    expected = run(pytester, "pytest-asyncio", project_url, "--strict-markers", in_process=True)
    (tests / "test_orders.py").write_text(marked.replace("@pytest.mark", "# @pytest.mark"))
    unmarked = run(pytester, "pytest-asyncio", project_url, in_process=True)

    expected.assert_outcomes(passed=1)
    unmarked.assert_outcomes(failed=1)
    first, second, _, *traceback = shown.splitlines()
    unmarked.stdout.fnmatch_lines([first, second, ""])
    # The guide's app is the guide's own sketch: its line numbers are not this file's.
    shown_lines = [re.sub(r"line \d+", "line *", line.replace("...", "*")) for line in traceback]
    unmarked.stdout.fnmatch_lines(shown_lines)
