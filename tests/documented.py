"""Run what the docs show: their python blocks, and the apps they build, served by uvicorn.

A documented app is served by a real uvicorn server inside the test's own event loop, over
HTTP on 127.0.0.1: the client sees what a server sends (a failed commit is a response, not an
exception in the test), while the test keeps the app's ``Database`` at hand (``db.stats()``)
and the server's log records reach ``caplog``.
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import re
import socket
import sys
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, overload

import uvicorn
from starlette.types import ASGIApp

from tests import docs_blocks

ROOT = Path(__file__).parent.parent
DOCS_URL = '"postgresql+asyncpg://app@localhost/app"'
STARTUP_TIMEOUT = 20.0


def blocks(document: str, language: str = "python") -> list[str]:
    """The fenced blocks of one language (python; text for output the docs show) of a
    Markdown file under the repository root."""
    source = (ROOT / document).read_text()
    return re.findall(rf"```{language}\n(.*?)```", source, flags=re.DOTALL)


class PythonBlocks(Sequence[str]):
    """The ```python blocks of one document; a block taken by its index counts as run
    (tests/docs_blocks.py), while looking through them, ``for`` or ``in``, does not."""

    def __init__(self, document: str) -> None:
        self.document = document
        self.blocks = blocks(document)

    @overload
    def __getitem__(self, index: int) -> str: ...
    @overload
    def __getitem__(self, index: slice) -> list[str]: ...
    def __getitem__(self, index: int | slice) -> str | list[str]:
        taken = self.blocks[index]
        docs_blocks.take(self.document, [taken] if isinstance(taken, str) else taken)
        return taken

    def __len__(self) -> int:
        return len(self.blocks)

    def __iter__(self) -> Iterator[str]:
        return iter(self.blocks)


def python_blocks(document: str) -> PythonBlocks:
    """The ```python blocks of a Markdown file under the repository root."""
    return PythonBlocks(document)


def block_containing(document: str, needle: str, language: str = "python") -> str:
    """The one block of ``document`` in ``language`` that contains ``needle``; a python
    block found so counts as run (tests/docs_blocks.py)."""
    found = [block for block in blocks(document, language) if needle in block]
    if len(found) != 1:
        message = f"{document} has {len(found)} {language} blocks containing {needle!r}, not 1"
        raise LookupError(message)
    if language == "python":
        docs_blocks.take(document, found)
    return found[0]


def run_block(
    code: str,
    url: str,
    *,
    namespace: Mapping[str, Any] | None = None,
    replace: Mapping[str, str] | None = None,
    module_name: str = "documented_example",
) -> dict[str, Any]:
    """Execute a documented block as a module, with its database URL replaced by ``url``.

    ``namespace`` gives what the page defined earlier (``db``, ``app``, ``Session``);
    ``replace`` swaps literal text, such as a timeout too long to wait for in a test;
    ``module_name`` is the module the block's classes say they belong to.
    """
    code = code.replace(DOCS_URL, repr(url))
    for old, new in (replace or {}).items():
        if old not in code:
            raise LookupError(f"{old!r} is not in the block")
        code = code.replace(old, new)
    module = ModuleType(module_name)
    module.__dict__.update(namespace or {})
    # SQLAlchemy resolves a mapped class's annotations through sys.modules, as it does for a
    # module imported from a file.
    previous = sys.modules.get(module_name)
    sys.modules[module_name] = module
    try:
        exec(compile(code, "<docs>", "exec"), module.__dict__)  # noqa: S102 - our own docs
    finally:
        if previous is None:
            del sys.modules[module_name]
        else:
            sys.modules[module_name] = previous
    return module.__dict__


async def run_async_block(code: str, namespace: dict[str, Any]) -> list[tuple[str, str]]:
    """Run a block written with top-level ``await``; return each commented expression's repr.

    A line such as ``db.stats()  # PoolStats(...)`` is a claim about what the expression
    gives: the result is ``(comment, repr(value))`` for every such expression statement.
    """
    tree = ast.parse(code)
    lines = code.splitlines()
    seen: list[tuple[str, str]] = []
    namespace["_documented_seen"] = seen

    class Record(ast.NodeTransformer):
        def visit_Expr(self, node: ast.Expr) -> ast.AST:
            line = lines[node.lineno - 1]
            if "#" not in line or isinstance(node.value, ast.Await):
                return node
            comment = line.split("#", 1)[1].strip()
            append = ast.Attribute(ast.Name("_documented_seen", ast.Load()), "append", ast.Load())
            shown = ast.Call(ast.Name("repr", ast.Load()), [node.value], [])
            call = ast.Expr(
                ast.Call(append, [ast.Tuple([ast.Constant(comment), shown], ast.Load())], [])
            )
            return ast.copy_location(call, node)

    tree = ast.fix_missing_locations(Record().visit(tree))
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    result = eval(compile(tree, "<docs>", "exec", flags=flags), namespace)  # noqa: S307
    if result is not None:
        await result
    return seen


@contextlib.asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[str]:
    """Serve ``app`` (its lifespan included) with uvicorn in this event loop; yield its URL."""
    async with served(app) as (url, _):
        yield url


@contextlib.asynccontextmanager
async def served(app: ASGIApp) -> AsyncIterator[tuple[str, uvicorn.Server]]:
    """As :func:`serving`, and the server too (its ``server_state`` counts the connections)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while not server.started:
                if task.done():
                    task.result()  # the reason it stopped
                    raise RuntimeError("uvicorn stopped before it started serving")
                await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        await task
        sock.close()
