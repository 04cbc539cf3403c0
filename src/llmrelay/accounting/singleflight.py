"""One load for a crowd: callers asking for the same thing while it loads share one result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Future[T]] = {}

    async def run(self, name: str, load: Callable[[], Awaitable[T]]) -> T:
        """``load()``'s result, started by the first caller for ``name``; shielded, so a caller
        that goes away (a client disconnect) does not cancel it for the others."""
        running = self._running.get(name)
        if running is None:
            running = asyncio.ensure_future(load())
            self._running[name] = running
            running.add_done_callback(lambda done: self._finished(name, done))
        return await asyncio.shield(running)

    def _finished(self, name: str, done: asyncio.Future[T]) -> None:
        self._running.pop(name, None)
        if not done.cancelled():
            done.exception()  # delivered to whoever still waited; never "never retrieved"
