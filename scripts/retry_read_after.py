"""@db.retry() on an endpoint that lists Depends(db.session) before a dependency reading
through Depends(db.read_session): a conflict in the first attempt."""
import asyncio, sys
from typing import Annotated
from fastapi import Depends, FastAPI
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession
from dbscope import Database
sys.path.insert(0, "/tmp/lastreview")
from tests.helpers import send, count_rows

URL = "postgresql://postgres@127.0.0.1:5432/lastreview_pg"
CONFLICT = "DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$"

async def main(order: str) -> None:
    runs: list[int] = []
    app = FastAPI()
    async with Database(URL) as db:
        async with db.transaction() as s:
            await s.execute(text("DROP TABLE IF EXISTS lr_rows"))
            await s.execute(text("CREATE TABLE lr_rows (n int)"))

        async def current_user(session: Annotated[AsyncSession, Depends(db.read_session)]) -> str:
            return str(await session.scalar(text("SELECT current_user")))

        if order == "session_first":
            @app.post("/work")
            @db.retry(backoff=0)
            async def work(session: Annotated[AsyncSession, Depends(db.session)],
                           user: Annotated[str, Depends(current_user)]) -> str:
                runs.append(1)
                await session.execute(text("INSERT INTO lr_rows VALUES (1)"))
                if len(runs) == 1:
                    await session.execute(text(CONFLICT))
                return user
        else:
            @app.post("/work")
            @db.retry(backoff=0)
            async def work(user: Annotated[str, Depends(current_user)],
                           session: Annotated[AsyncSession, Depends(db.session)]) -> str:
                runs.append(1)
                await session.execute(text("INSERT INTO lr_rows VALUES (1)"))
                if len(runs) == 1:
                    await session.execute(text(CONFLICT))
                return user
        answer = await send(app, "POST /work")
        async with db.transaction() as s:
            n = await s.scalar(text("SELECT count(*) FROM lr_rows"))
            await s.execute(text("DROP TABLE lr_rows"))
    print(order, answer.status_code, answer.text[:200], "runs", len(runs), "rows", n)

asyncio.run(main(sys.argv[1]))
