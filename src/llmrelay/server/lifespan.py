"""The ASGI lifespan protocol: the application's start-up and shutdown, driven by the server."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from llmrelay.server.protocol import ASGI_VERSION, Message


class LifespanFailed(RuntimeError):
    """The application reported ``lifespan.startup.failed`` or ``lifespan.shutdown.failed``."""


class Lifespan:
    def __init__(self, app: Any) -> None:
        self._app = app
        self._inbox: asyncio.Queue[Message] = asyncio.Queue()
        self._replies: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def startup(self) -> None:
        self._task = asyncio.create_task(self._main())
        await self._step("lifespan.startup")

    async def shutdown(self) -> None:
        if self._task is None or self._task.done():
            return
        try:
            await self._step("lifespan.shutdown")
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, timeout=5)

    async def _step(self, kind: str) -> None:
        await self._inbox.put({"type": kind})
        assert self._task is not None
        reply = asyncio.ensure_future(self._replies.get())
        await asyncio.wait([reply, self._task], return_when=asyncio.FIRST_COMPLETED)
        if not reply.done():
            reply.cancel()
            error = self._task.exception()
            raise LifespanFailed(f"{kind} ended the application: {error!r}") from error
        message = reply.result()
        if message["type"] == f"{kind}.failed":
            raise LifespanFailed(message.get("message") or f"{kind} failed")

    async def _main(self) -> None:
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": {}}
        await self._app(scope, self._inbox.get, self._replies.put)
