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
"""

from typing import Annotated, Final

from fastapi import Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy import BigInteger, ForeignKey, String, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from dbscope import Database

DEFAULT_URL: Final = "sqlite+aiosqlite:///bank.db"


class Base(DeclarativeBase):
    """The bank's tables."""


class Account(Base):
    """An account and its balance, in cents."""

    __tablename__ = "bank_accounts"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int] = mapped_column(BigInteger)


class Transfer(Base):
    """One transfer, as the ledger keeps it."""

    __tablename__ = "bank_ledger"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    source: Mapped[int] = mapped_column(ForeignKey("bank_accounts.id"))
    target: Mapped[int] = mapped_column(ForeignKey("bank_accounts.id"))
    amount: Mapped[int] = mapped_column(BigInteger)


class TransferIn(BaseModel):
    """A transfer the client asks for, named by the client."""

    id: str = Field(min_length=1, max_length=64)
    source: int
    target: int
    amount: int = Field(gt=0)


def create_app(db: Database) -> FastAPI:
    """The bank's routes on ``db``; the app connects and disposes it in its lifespan."""
    app = FastAPI(title="Bank (dbscope example)", lifespan=db.lifespan)
    Session = Annotated[AsyncSession, Depends(db.session)]
    ReadSession = Annotated[AsyncSession, Depends(db.read_session)]

    @app.post("/transfers", status_code=201)
    async def transfer(body: TransferIn, session: Session) -> dict[str, str]:
        if body.source == body.target:
            raise HTTPException(422, "source and target are the same account")
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
