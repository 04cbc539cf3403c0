"""A stream that outlives its client, for providers that keep generating after a disconnect.

Such a provider bills the whole answer whatever the client does, so the gateway must read it to the
end to bill it honestly. The upstream is therefore consumed by its own task, which hands chunks to
the client through a bounded queue of batches (backpressure is kept: a slow client slows the
upstream read).
When the client goes away the stream is *detached*: the task keeps reading, only metering, and
writes the ledger row when the upstream ends (or after a time limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence

from llmrelay.core.chunks import Chunk
from llmrelay.core.exchange import Exchange

log = logging.getLogger("llmrelay.pipeline")

_END = object()
_QUEUE_BATCHES = 64


class ShieldedStream:
    def __init__(
        self,
        chunks: AsyncIterator[Sequence[Chunk]],
        exchange: Exchange,
        on_drained: Callable[[Exchange], None],
        drain_seconds: float,
    ) -> None:
        self._chunks = chunks
        self._exchange = exchange
        self._on_drained = on_drained
        self._drain_seconds = drain_seconds
        self._queue: asyncio.Queue[object] = asyncio.Queue(_QUEUE_BATCHES)
        self._detached = False
        self._task = asyncio.create_task(self._pump())

    @property
    def task(self) -> asyncio.Task[None]:
        return self._task

    def __aiter__(self) -> AsyncIterator[Sequence[Chunk]]:
        return self

    async def __anext__(self) -> Sequence[Chunk]:
        item = await self._queue.get()
        if item is _END:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def detach(self) -> None:
        """The client is gone: keep reading to the end, metering only, then bill."""
        self._detached = True
        self._meter_queued()
        self._task.get_loop().call_later(self._drain_seconds, self._task.cancel)

    def _meter_queued(self) -> None:
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, Sequence):
                self._meter(item)

    async def aclose(self) -> None:
        """The stream ended normally or by a failure: stop reading."""
        if not self._detached:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _pump(self) -> None:
        try:
            async for batch in self._chunks:
                await self._deliver(batch)
            await self._deliver(_END)
        except Exception as exc:
            if self._detached:
                log.info("drain of %s ended: %s", self._exchange.id, exc.__class__.__name__)
            else:
                await self._queue.put(exc)
        finally:
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()
            if self._detached:
                self._on_drained(self._exchange)

    async def _deliver(self, item: object) -> None:
        if self._detached:
            if isinstance(item, Sequence):
                self._meter(item)
            return
        await self._queue.put(item)
        if self.detached:  # detached while waiting for room: the consumer is gone
            self._meter_queued()

    def _meter(self, batch: Sequence[Chunk]) -> None:
        for chunk in batch:
            self._exchange.observe_chunk(chunk)

    @property
    def detached(self) -> bool:
        return self._detached
