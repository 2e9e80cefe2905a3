"""A small bank over HTTP, on dbscope's public API only: accounts, and a ledger of transfers.

``POST /transfers`` moves an amount from one account to another and writes the transfer to
the ledger, all in the request's one unit of work (``Depends(db.session)``): the response is
2xx only once the transaction has committed, and an error leaves nothing of it behind. The
client names each transfer (``id``), so that one retried after a 503, whose commit may or
may not have happened, is never applied twice (409). ``GET /balance`` is the total of all
accounts, which no transfer changes.

The tests and the failover benchmark (tests/test_failover_bank.py, benchmarks/failover.py)
serve it with uvicorn on a Patroni cluster through a multi-host URL, while the cluster
switches over and its leader crashes; ``python -m examples.bank`` serves it on
``DATABASE_URL`` (default: a SQLite file, bank.db), after :func:`open_accounts`.

Every input is bounded by the column that stores it (the constants below), so that a value
the database cannot hold is refused with a 422 naming the field before any SQL runs, instead
of failing in the driver with a 500. The 422 handler is the notes example's (examples/notes),
copied so that each example stands on its own.
"""

from typing import Annotated, Final, Self

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator
from sqlalchemy import BigInteger, ForeignKey, Integer, String, func, select, update
from sqlalchemy.dialects.mysql import VARCHAR
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import Database

DEFAULT_URL: Final = "sqlite+aiosqlite:///bank.db"
# The bounds of the columns below. Account ids are `integer`, 32 bits on PostgreSQL and
# MariaDB/MySQL: a larger id names no account, and the drivers fail on it instead of finding
# none (asyncpg beyond 32 bits, SQLite beyond 64). Amounts and balances are `bigint`.
MAX_ACCOUNT_ID: Final = 2**31 - 1
MAX_AMOUNT: Final = 2**63 - 1
TRANSFER_ID_LENGTH: Final = 64
# PostgreSQL's text types cannot hold a NUL character, and MariaDB/MySQL compare strings
# without their trailing spaces: a transfer id has neither.
TRANSFER_ID: Final = r"^[^\x00]*[^\x00 ]$"


class Base(DeclarativeBase):
    """The bank's tables."""


class Account(Base):
    """An account and its balance, in cents."""

    __tablename__ = "bank_accounts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(BigInteger)


class Transfer(Base):
    """One transfer, as the ledger keeps it."""

    __tablename__ = "bank_ledger"

    # Compared as written. MariaDB/MySQL's default collation finds 'dup', 'DUP' and 'dúp'
    # equal, and would answer a new transfer 'already applied': a binary one there (which
    # still ignores trailing spaces, which TRANSFER_ID refuses).
    id: Mapped[str] = mapped_column(
        String(TRANSFER_ID_LENGTH).with_variant(
            VARCHAR(TRANSFER_ID_LENGTH, collation="utf8mb4_bin"), "mysql"
        ),
        primary_key=True,
    )
    source: Mapped[int] = mapped_column(ForeignKey("bank_accounts.id"))
    target: Mapped[int] = mapped_column(ForeignKey("bank_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)


# Accounts are numbered from 0 (open_accounts).
AccountId = Annotated[int, Field(ge=0, le=MAX_ACCOUNT_ID)]


class TransferIn(BaseModel):
    """A transfer the client asks for, named by the client."""

    id: str = Field(min_length=1, max_length=TRANSFER_ID_LENGTH, pattern=TRANSFER_ID)
    source: AccountId
    target: AccountId
    amount: int = Field(gt=0, le=MAX_AMOUNT)

    @model_validator(mode="after")
    def two_accounts(self) -> Self:
        """Refuse a transfer from an account to itself, as any other invalid body (422)."""
        if self.source == self.target:
            message = "source and target are the same account; name two."
            raise ValueError(message)
        return self


async def refuse_invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
    """422 naming each invalid field, as FastAPI's own handler does, without the input.

    FastAPI's handler echoes each invalid value back. That can be a string with a lone
    surrogate (valid JSON, not valid Unicode) that no UTF-8 response can carry: rendering the
    422 would then fail with a 500. The client sent the input; it has it.
    """
    # Nor its context (a validator's own ValueError, which JSON cannot carry anyway).
    shown = ("type", "loc", "msg")
    detail = [{key: value for key, value in e.items() if key in shown} for e in error.errors()]
    return JSONResponse({"detail": jsonable_encoder(detail)}, status_code=422)


def create_app(db: Database) -> FastAPI:
    """The bank's routes on ``db``; the app connects and disposes it in its lifespan."""
    app = FastAPI(
        title="Bank (dbscope example)",
        lifespan=db.lifespan,
        exception_handlers={RequestValidationError: refuse_invalid_request},
    )
    Session = Annotated[AsyncSession, Depends(db.session)]
    ReadSession = Annotated[AsyncSession, Depends(db.read_session)]

    @app.post("/transfers", status_code=201)
    async def transfer(body: TransferIn, session: Session) -> dict[str, str]:
        # Both rows locked in one order, whatever the direction: no deadlock between two
        # transfers that cross.
        locked = select(Account.id).where(Account.id.in_((body.source, body.target)))
        found = (await session.scalars(locked.order_by(Account.id).with_for_update())).all()
        if len(found) != 2:
            raise HTTPException(404, "no such account")
        debit = update(Account).where(Account.id == body.source, Account.balance >= body.amount)
        debited = await session.execute(debit.values(balance=Account.balance - body.amount))
        if debited.rowcount != 1:  # type: ignore[attr-defined]
            raise HTTPException(409, "insufficient funds")
        credit = update(Account).where(Account.id == body.target)
        await session.execute(credit.values(balance=Account.balance + body.amount))
        session.add(Transfer(**body.model_dump()))
        try:
            await session.flush()
        except IntegrityError:  # this transfer id was applied before: the unit rolls back
            raise HTTPException(409, "transfer already applied") from None
        return {"id": body.id}

    @app.get("/balance")
    async def balance(session: ReadSession) -> dict[str, int]:
        total = await session.scalar(select(func.coalesce(func.sum(Account.balance), 0)))
        accounts = await session.scalar(select(func.count()).select_from(Account))
        return {"total": int(total or 0), "accounts": int(accounts or 0)}

    return app


async def open_accounts(db: Database, accounts: int, balance: int) -> None:
    """Make the tables anew: ``accounts`` accounts of ``balance`` cents each, no transfer."""
    async with db.transaction() as session:
        connection = await session.connection()
        await connection.run_sync(Base.metadata.drop_all)
        await connection.run_sync(Base.metadata.create_all)
        session.add_all(Account(id=number, balance=balance) for number in range(accounts))


db = Database.from_env(default_url=DEFAULT_URL)
app = create_app(db)
