"""The notes example on a SQLite file under concurrent writers: how many requests succeed.

``python benchmarks/sqlite_writers.py`` (in the project's .venv) migrates a new SQLite file in
a temporary directory, serves ``examples.notes`` on it under uvicorn on 127.0.0.1, and sends,
``--concurrency`` at a time (20):

- ``--requests`` (1,000) ``POST /notes``, each of which looks its author up, then inserts;
- as many ``GET /notes?limit=50``;
- as many mixed: one ``POST /notes`` in four, the rest ``GET /notes/{id}``.

It prints each batch's answers by status (or by the client's error, for a connection the
server closed without answering) and requests per second, then stops the server. Run on a
checkout before the change of SQLite's BEGIN to see what it was. ``--workers 3`` serves it
from three processes on the one file (uvicorn's ``--workers``).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
Batch = Callable[[int], Awaitable[int | str]]


async def measure(client: httpx.AsyncClient, requests: int, concurrency: int) -> None:
    """Send the three batches and print what each got."""
    author = (await client.post("/authors", json={"name": "bench"})).json()["id"]
    note = {"author_id": author, "title": "first"}
    first = (await client.post("/notes", json=note)).json()["id"]
    line = asyncio.Semaphore(concurrency)

    async def send(method: str, path: str, body: object = None) -> int | str:
        async with line:
            try:
                return (await client.request(method, path, json=body)).status_code
            except httpx.TransportError as error:
                return type(error).__name__

    def post(number: int) -> Awaitable[int | str]:
        return send("POST", "/notes", {"author_id": author, "title": f"note {number}"})

    def mixed(number: int) -> Awaitable[int | str]:
        return post(number) if number % 4 == 0 else send("GET", f"/notes/{first}")

    batches: dict[str, Batch] = {
        "POST /notes": post,
        "GET /notes": lambda _: send("GET", "/notes?limit=50"),
        "mixed": mixed,
    }
    for name, batch in batches.items():
        started = time.perf_counter()
        answers = await asyncio.gather(*map(batch, range(requests)))
        elapsed = time.perf_counter() - started
        counts = dict(sorted(collections.Counter(map(str, answers)).items()))
        print(f"{name:12} {counts}  {requests / elapsed:.0f} requests/s")


def serve(database: Path, port: int, log: Path, workers: int) -> subprocess.Popen[bytes]:
    """Migrate ``database``, then serve the example on it."""
    environment = {**os.environ, "DATABASE_URL": f"sqlite+aiosqlite:///{database}"}
    migrate = [sys.executable, "-m", "dbscope._cli", "migrate", "--app", "examples.notes.app:db",
               "-c", "examples/notes/alembic.ini", "upgrade", "head"]  # fmt: skip
    subprocess.run(migrate, cwd=ROOT, env=environment, check=True, capture_output=True)
    command = [sys.executable, "-m", "uvicorn", "examples.notes.app:app", "--no-access-log",
               "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]  # fmt: skip
    with log.open("w") as output:
        return subprocess.Popen(command, cwd=ROOT, env=environment, stdout=output, stderr=output)


async def run(requests: int, concurrency: int, workers: int, port: int) -> None:
    """Serve the example on a new file, measure, stop it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as directory:
        log = Path(directory) / "uvicorn.log"
        server = serve(Path(directory) / "notes.db", port, log, workers)
        limits = httpx.Limits(max_connections=concurrency)
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
                for _ in range(200):  # 20 s at most for the server to answer
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get("/livez")).status_code == 200:
                            break
                    await asyncio.sleep(0.1)
                await measure(client, requests, concurrency)
        finally:
            server.terminate()
            server.wait(timeout=10)
        errors = log.read_text().count("Exception in ASGI application")
        print(f"unhandled errors in the server's log: {errors}")


def main() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="per batch (1000)")
    parser.add_argument("--concurrency", type=int, default=20, help="at once (20)")
    parser.add_argument("--workers", type=int, default=1, help="server processes (1)")
    parser.add_argument("--port", type=int, default=0, help="on 127.0.0.1 (0: a free one)")
    arguments = parser.parse_args()
    args = arguments.requests, arguments.concurrency, arguments.workers, arguments.port
    asyncio.run(run(*args))


if __name__ == "__main__":
    main()
