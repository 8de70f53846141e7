"""Request-size cap for the bot server: an HTTP body over the limit is answered 413.

A pure ASGI middleware, so it also stops bodies sent without ``Content-Length`` (chunked) as they
stream in, before a handler buffers them. WebSocket frames are capped by uvicorn's
``ws_max_size`` (``run_server``) and per message by ``bots/twilio/media_stream.py``.
"""

from __future__ import annotations

import json
from typing import Any

from loguru import logger

#: Default cap: Twilio webhooks are a few KB, a WebRTC offer ~10 KB.
MAX_REQUEST_BYTES = 1024 * 1024


class _TooLarge(Exception):
    pass


class BodySizeLimit:
    """Refuses HTTP requests whose body is larger than ``max_bytes`` (0 = no limit)."""

    def __init__(self, app: Any, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        """Wrap the ASGI ``app``."""
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, scope: dict, send: Any, size: str) -> None:
        client = scope.get("client") or ("?", 0)
        logger.warning(
            f"refused {scope.get('method')} {scope.get('path')} from {client[0]}: "
            f"body of {size} bytes over {self.max_bytes}"
        )
        body = json.dumps({"error": f"request body over {self.max_bytes} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        """Pass the request on, counting its body."""
        if scope["type"] != "http" or self.max_bytes <= 0:
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers") or []:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(scope, send, str(declared))
                    return
        received = 0
        started = False

        async def counted_receive() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message: dict) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(scope, send, f"more than {received}")
