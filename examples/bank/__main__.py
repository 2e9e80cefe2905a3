"""``python -m examples.bank``: 10 accounts of 1000.00 each, then the bank on
http://127.0.0.1:8000 (``DATABASE_URL``, default a SQLite file bank.db)."""

import asyncio

import uvicorn

from dbscope import Database

from .app import DEFAULT_URL, app, open_accounts


async def _open() -> None:
    async with Database.from_env(default_url=DEFAULT_URL) as db:
        await open_accounts(db, accounts=10, balance=100_000)


if __name__ == "__main__":
    asyncio.run(_open())
    uvicorn.run(app, host="127.0.0.1", port=8000)
