"""Surface-independent pieces of a streamed response: the stream's lifecycle (open, commit, relay,
close), keep-alive and client-disconnect watching."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from llmrelay.api.asgi import Headers, Receive, Send
from llmrelay.core.chunks import Chunk, RawChunk
from llmrelay.core.errors import GatewayError
from llmrelay.core.exchange import Exchange
from llmrelay.core.pipeline import Gateway, OpenedStream
from llmrelay.core.types import ChatRequest, JSONObject, Usage


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
    """The client's side of one stream: commits the response, writes to it, keeps it alive.

    One timer, and no task unless the line goes quiet. The timer keeps the gap between bytes to
    the client under ``interval`` seconds for the whole life of the stream: when the line has
    been quiet that long it writes a keep-alive, from a task made for that one write (so only
    idle streams pay for one). Before the first chunk that keep-alive commits the response (the
    commit rule: committed at the first upstream event or after ``interval`` seconds of waiting
    for it, whichever is first), and the pipeline then retries nothing (``committed``).

    It also bounds a client that stops reading: ``send`` blocks once the server's write buffer
    is full (so memory stays bounded by that buffer), and a send blocked for ``write_timeout``
    seconds calls ``on_stall``, which ends the request as if the client had gone. ``on_commit``
    is called once, when the response starts.
    """

    __slots__ = (
        "_blocked_since",
        "_committed",
        "_headers",
        "_interval",
        "_keepalive",
        "_keeping",
        "_last",
        "_loop",
        "_on_commit",
        "_on_stall",
        "_send",
        "_timer",
        "_write_timeout",
    )

    def __init__(
        self,
        send: Send,
        headers: Callable[[], Headers],
        keepalive: bytes,
        interval: float,
        write_timeout: float,
        on_stall: Callable[[], None],
        on_commit: Callable[[], None],
    ) -> None:
        self._send = send
        self._headers = headers
        self._keepalive = keepalive
        self._interval = interval
        self._write_timeout = write_timeout
        self._on_stall = on_stall
        self._on_commit = on_commit
        self._committed = False
        self._loop = loop = asyncio.get_running_loop()
        self._last = loop.time()
        self._blocked_since: float | None = None
        self._keeping: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = loop.call_at(self._last + interval, self._tick)

    @property
    def committed(self) -> bool:
        return self._committed

    async def start(self) -> None:
        """Commit the response, unless a keep-alive has done it already."""
        await self._settle()
        if not self._committed:
            await self._start()

    async def _settle(self) -> None:
        """Let a keep-alive being written finish first (it may be committing the response)."""
        keeping = self._keeping
        if keeping is not None and not keeping.done():
            with contextlib.suppress(Exception):
                await keeping

    async def _start(self) -> None:
        self._committed = True
        self._on_commit()
        await self._send({"type": "http.response.start", "status": 200, "headers": self._headers()})

    async def write(self, data: bytes) -> None:
        now = self._loop.time()
        self._last = now
        self._blocked_since = now
        await self._send({"type": "http.response.body", "body": data, "more_body": True})
        self._blocked_since = None

    async def end(self, data: bytes = b"") -> None:
        """The last bytes of the stream (the response is committed first if it was not)."""
        await self._settle()
        self.stop()
        if not self._committed:
            await self._start()
        await self._send({"type": "http.response.body", "body": data, "more_body": False})

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._keeping is not None:
            self._keeping.cancel()
            self._keeping = None

    def _tick(self) -> None:
        loop = self._loop
        now = loop.time()
        blocked = self._blocked_since
        if blocked is not None:
            if now - blocked >= self._write_timeout:
                self._timer = None
                self._on_stall()
                return
            wake = min(now + self._interval, blocked + self._write_timeout)
        elif now - self._last < self._interval:
            wake = self._last + self._interval
        else:
            self._last = now
            self._keeping = loop.create_task(self._keep_alive())
            wake = now + self._interval
        self._timer = loop.call_at(wake, self._tick)

    async def _keep_alive(self) -> None:
        if not self._committed:
            await self._start()
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


async def stream(
    gateway: Gateway,
    exchange: Exchange,
    chat: ChatRequest,
    send: Send,
    watcher: DisconnectWatcher,
    encoder: StreamEncoder,
    keepalive: bytes,
    headers: Callable[[], Headers],
    send_error: Callable[[GatewayError], Awaitable[None]],
    *,
    raw_chunks: bool = False,
) -> None:
    """A streamed answer on every surface: open the upstream stream, commit, relay, close.

    The keep-alive timer runs from the start: a slow first chunk commits the response with a
    keep-alive, and a failure after that is written into the stream (``encoder.fail``) rather
    than answered with ``send_error``. ``headers`` is called at the commit (the resolved model is
    known then); ``raw_chunks``: the encoder takes ``RawChunk`` items.
    """
    settings = gateway.settings
    observer = gateway.observer
    writer = StreamWriter(
        send,
        headers,
        keepalive,
        settings.keepalive_seconds,
        settings.client_write_timeout_seconds,
        watcher.client_stalled,
        lambda: observer.stream_opened(exchange),
    )
    try:
        try:
            opened = await gateway.open_stream(exchange, chat, line=writer, raw_chunks=raw_chunks)
        except GatewayError as error:
            gateway.fail(exchange, error)
            if writer.committed:
                await writer.end(encoder.fail(error))
            else:
                writer.stop()
                await send_error(error)
            return
        try:
            await relay(gateway, exchange, opened, writer, encoder)
        finally:
            await gateway.close_stream(exchange, opened)
    finally:
        writer.stop()
        if writer.committed:
            observer.stream_closed(exchange)


async def relay(
    gateway: Gateway,
    exchange: Exchange,
    opened: OpenedStream,
    writer: StreamWriter,
    encoder: StreamEncoder,
) -> None:
    """Commit an opened stream and relay it: one write per upstream read (the first event
    alone), and the surface's own tail or mid-stream error."""
    try:
        await writer.start()
        first = opened.first
        if first:
            # The first event goes out alone: the client's first token must not wait for the
            # encoding of the rest of its read (a fast upstream's first read may hold them all).
            for part in (first[:1], first[1:]):
                data = encode_batch(exchange, encoder, part) if part else b""
                if data:
                    await writer.write(data)
        if not opened.ended:
            async for batch in opened.chunks:
                data = encode_batch(exchange, encoder, batch)
                if data:
                    await writer.write(data)
        usage, _ = gateway.final_usage(exchange)
        await writer.end(encoder.close(usage))
    except GatewayError as error:
        gateway.fail(exchange, error)
        await writer.end(encoder.fail(error))
