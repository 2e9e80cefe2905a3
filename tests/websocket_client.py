"""A WebSocket client for tests: one connection to an ASGI app, spoken in ASGI messages."""

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message

ANSWER_TIMEOUT = 10.0


class WebSocketClient:
    """One WebSocket connection to an ASGI app, spoken in ASGI messages, in this event loop.

    (Starlette's TestClient would run the app on a loop of its own, and uvicorn needs a
    WebSocket library the suite does not install.)
    """

    def __init__(self, app: ASGIApp, path: str) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.outbox: asyncio.Queue[Message] = asyncio.Queue()
        scope = {
            "type": "websocket",
            "asgi": {"version": "3.0"},
            "scheme": "ws",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [],
            "server": ("docs", 80),
            "client": ("127.0.0.1", 50000),
            "subprotocols": [],
        }
        self.app = asyncio.ensure_future(app(scope, self.inbox.get, self.outbox.put))

    async def connect(self) -> None:
        """Open the connection; the app must accept it."""
        await self.inbox.put({"type": "websocket.connect"})
        assert (await self.answer())["type"] == "websocket.accept"

    async def send_text(self, text: str) -> Any:
        """Send one text message; return the JSON the app answers with."""
        await self.inbox.put({"type": "websocket.receive", "text": text})
        return json.loads((await self.answer())["text"])

    async def close(self) -> None:
        """Disconnect, and wait for the app's handler to end."""
        await self.inbox.put({"type": "websocket.disconnect", "code": 1000})
        await asyncio.wait_for(self.app, ANSWER_TIMEOUT)

    async def answer(self) -> Message:
        return await asyncio.wait_for(self.outbox.get(), ANSWER_TIMEOUT)
