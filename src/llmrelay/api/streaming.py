"""Surface-independent pieces of a streamed response: keep-alive and client-disconnect watching."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Protocol

from llmrelay.api.asgi import Headers, Receive, Send
from llmrelay.core.chunks import Chunk, RawChunk
from llmrelay.core.errors import GatewayError
from llmrelay.core.exchange import Exchange
from llmrelay.core.pipeline import Gateway, OpenedStream
from llmrelay.core.types import JSONObject, Usage


def encode_batch(exchange: Exchange, encoder: StreamEncoder, batch: Sequence[Chunk]) -> bytes:
    """One upstream read's chunks, metered and encoded, as the bytes of one write to the client.

    One ASGI ``send`` per read rather than per chunk: where a read carries many events (a fast
    model, a burst after a pause) the server's per-send work is paid once.
    """
    parts = []
    for chunk in batch:
        if isinstance(chunk, RawChunk):
            exchange.observe_text(chunk.chars)
            data = encoder.encode_raw(chunk)
        else:
            exchange.observe_chunk(chunk)
            data = encoder.encode(chunk)
        if data:
            parts.append(data)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class StreamWriter:
    """Writes body bytes and, from a watchdog task, a keep-alive whenever the line goes quiet.

    The watchdog keeps the gap between bytes to the client under ``interval`` seconds for the
    whole life of the stream, including a long silent wait for the first token. It also bounds a
    client that stops reading: ``send`` blocks once the server's write buffer is full (so memory
    stays bounded by that buffer), and a send blocked for ``write_timeout`` seconds calls
    ``on_stall``, which ends the request as if the client had gone.
    """

    __slots__ = (
        "_blocked_since",
        "_interval",
        "_keepalive",
        "_last",
        "_loop",
        "_on_stall",
        "_send",
        "_task",
        "_write_timeout",
    )

    def __init__(
        self,
        send: Send,
        keepalive: bytes,
        interval: float,
        write_timeout: float,
        on_stall: Callable[[], None],
    ) -> None:
        self._send = send
        self._keepalive = keepalive
        self._interval = interval
        self._write_timeout = write_timeout
        self._on_stall = on_stall
        self._loop = asyncio.get_running_loop()
        self._last = self._loop.time()
        self._blocked_since: float | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch())

    async def write(self, data: bytes) -> None:
        now = self._loop.time()
        self._last = now
        self._blocked_since = now
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        self._blocked_since = None

    async def end(self, data: bytes = b"") -> None:
        self.stop()
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _watch(self) -> None:
        while True:
            now = self._loop.time()
            blocked = self._blocked_since
            if blocked is not None:
                if now - blocked >= self._write_timeout:
                    self._on_stall()
                    return
                await asyncio.sleep(min(self._interval, blocked + self._write_timeout - now))
                continue
            wait = self._last + self._interval - now
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            await self.write(self._keepalive)


class DisconnectWatcher:
    """Cancels the request's task when the client goes away, after marking the exchange.

    ASGI servers report a disconnect only through ``receive()``; once the body is read, the
    next ``receive()`` returns exactly when the client is gone.
    """

    __slots__ = ("_exchange", "_target", "_task")

    def __init__(self, receive: Receive, exchange: Exchange) -> None:
        target = asyncio.current_task()
        assert target is not None

        async def watch() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    exchange.client_gone = True
                    target.cancel()
                    return

        self._task = asyncio.create_task(watch())
        self._target = target
        self._exchange = exchange

    def client_stalled(self) -> None:
        """The client stopped reading: end the request as if it had disconnected."""
        self._exchange.client_gone = True
        self._target.cancel()

    def stop(self) -> None:
        self._task.cancel()


def uncancel_if_client_gone(exchange: Exchange) -> bool:
    """After catching CancelledError: True (and the cancel consumed) if the client caused it."""
    if not exchange.client_gone:
        return False
    task = asyncio.current_task()
    if task is not None:
        with contextlib.suppress(AttributeError):
            task.uncancel()
    return True


class StreamEncoder(Protocol):
    """Canonical chunks → one surface's stream bytes (``b""`` when a chunk produces nothing)."""

    @property
    def headers(self) -> Headers:
        """The response headers of the stream (content type, caching)."""

    def encode(self, chunk: JSONObject) -> bytes | None: ...

    def encode_raw(self, chunk: RawChunk) -> bytes | None:
        """A plain chunk still in its upstream bytes (streams opened with ``raw_chunks``)."""

    def close(self, usage: Usage) -> bytes:
        """The tail of a stream that ended well; ``usage`` is the final (or estimated) usage."""

    def fail(self, error: GatewayError) -> bytes:
        """The tail of a stream that failed after the response was committed."""


async def relay(
    gateway: Gateway,
    exchange: Exchange,
    opened: OpenedStream,
    send: Send,
    watcher: DisconnectWatcher,
    encoder: StreamEncoder,
    keepalive: bytes,
    headers: Headers,
) -> None:
    """Commit a stream and relay it, on every surface: keep-alive from the moment of commit,
    one write per upstream read (the first event alone), and the surface's own tail or
    mid-stream error."""
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    settings = gateway.settings
    writer = StreamWriter(
        send,
        keepalive,
        settings.keepalive_seconds,
        settings.client_write_timeout_seconds,
        watcher.client_stalled,
    )
    writer.start()
    try:
        if opened.waiting:
            # Committed on the keep-alive timer: the line has been quiet that long already.
            await writer.write(keepalive)
        first = opened.first
        ended = opened.ended
        if first is None and opened.pending_first is not None:
            try:
                first = await opened.pending_first
            except StopAsyncIteration:
                ended = True
        if first is not None:
            # The first event goes out alone: the client's first token must not wait for the
            # encoding of the rest of its read (a fast upstream's first read may hold them all).
            for part in (first[:1], first[1:]):
                data = encode_batch(exchange, encoder, part) if part else b""
                if data:
                    await writer.write(data)
        if not ended:
            async for batch in opened.chunks:
                data = encode_batch(exchange, encoder, batch)
                if data:
                    await writer.write(data)
        usage, _ = gateway.final_usage(exchange)
        await writer.end(encoder.close(usage))
    except GatewayError as error:
        gateway.fail(exchange, error)
        await writer.end(encoder.fail(error))
    finally:
        writer.stop()
