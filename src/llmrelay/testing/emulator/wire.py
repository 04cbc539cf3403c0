"""Byte-level delivery shared by every provider emulator.

A provider renders its answer as :class:`Frame` s (one SSE event, one JSON-array piece, or a whole
body); :class:`Sink` writes them with the quirks the behaviour asks for (``crlf``, ``bytewise``,
``drop``) and records progress; :func:`play` drives a stream through delays and injected faults.
Client disconnects surface as :class:`ConnectionResetError` (or, with handler cancellation, as
:class:`asyncio.CancelledError`); the app's middleware records them.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from aiohttp import web

from llmrelay.testing.emulator.behaviour import Behaviour
from llmrelay.testing.emulator.recording import RecordedRequest

_POLL_SECONDS = 0.05
_LINGER_RESET = struct.pack("ii", 1, 0)
_HTML_BODY = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


class Frame(NamedTuple):
    """A piece of a streamed body; ``tokens`` completion tokens travel in it.

    A ``lead`` frame (role chunk, ``message_start``...) is never preceded by an injected fault.
    """

    data: bytes
    tokens: int = 0
    lead: bool = False


def _client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def pause(request: web.BaseRequest, seconds: float) -> None:
    """Sleep ``seconds``, raising :class:`ConnectionResetError` as soon as the client goes away.

    With ``handler_cancellation`` the handler is cancelled on disconnect anyway; polling the
    transport keeps detection prompt when the app runs without it.
    """
    deadline = time.monotonic() + seconds
    while True:
        if _client_gone(request):
            raise ConnectionResetError("client disconnected")
        left = deadline - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(left, _POLL_SECONDS))


async def hang(request: web.BaseRequest) -> None:
    """Never answer; return (by raising) only when the client disconnects."""
    while True:
        await pause(request, 3600.0)


class Sink:
    """Writes one response body with the behaviour's byte-level quirks and records progress."""

    __slots__ = ("_behaviour", "_request", "record", "response", "tokens")

    def __init__(
        self, request: web.BaseRequest, record: RecordedRequest, behaviour: Behaviour
    ) -> None:
        self._request = request
        self._behaviour = behaviour
        self.record = record
        self.response = web.StreamResponse()
        self.tokens = 0

    async def open(
        self, status: int, headers: Mapping[str, str], *, content_length: int | None = None
    ) -> None:
        """Send the status line and headers."""
        response = self.response
        response.set_status(status)
        response.headers.update(headers)
        if content_length is not None:
            response.content_length = content_length
        self.record.status = status
        await response.prepare(self._request)

    @property
    def request(self) -> web.BaseRequest:
        """The request being answered."""
        return self._request

    async def write(self, data: bytes, tokens: int = 0) -> None:
        """Write one frame carrying ``tokens`` completion tokens."""
        if self._behaviour.crlf:
            data = data.replace(b"\n", b"\r\n")
        await self._emit(data, tokens)

    async def _emit(self, data: bytes, tokens: int) -> None:
        record = self.record
        if record.first_byte_at is None:
            record.first_byte_at = time.monotonic()
        if self._behaviour.bytewise:
            for i in range(len(data)):
                await self.response.write(data[i : i + 1])
                record.bytes_written += 1
                # Yield so that the peer reads (and the kernel sends) every byte on its own.
                await asyncio.sleep(0)
        else:
            await self.response.write(data)
            record.bytes_written += len(data)
        record.events_written += 1
        self.tokens += tokens
        record.chunks_written += tokens

    async def reset(self) -> None:
        """Abort the connection with a TCP reset: no terminator, no orderly close."""
        self.record.aborted = True
        transport = self._request.transport
        if transport is None:
            return
        # Let the bytes already written reach the peer before the reset discards the send queue.
        await asyncio.sleep(0.01)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        transport.abort()

    async def send_body(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        """Send a whole (non-stream) body; with ``drop``, only its first half, then reset."""
        if self._behaviour.crlf:
            body = body.replace(b"\n", b"\r\n")
        await self.open(status, headers, content_length=len(body))
        if self._behaviour.drop is not None:
            await self._emit(body[: len(body) // 2], 0)
            await self.reset()
            return
        await self._emit(body, 0)


async def play(
    sink: Sink,
    frames: Iterable[Frame],
    behaviour: Behaviour,
    *,
    error: Callable[[], bytes],
    malformed: Callable[[], bytes],
) -> None:
    """Write ``frames`` with ``delay``, ``drop``, ``error_first``, ``error_mid`` and ``malformed``.

    ``error()`` renders the provider's in-stream error event; ``malformed()`` a frame that is not
    valid JSON (called when needed, so they may depend on what was written). Faults fire before
    the first non-lead frame after their token count: that frame has been pulled from ``frames``
    already, and is then dropped (``drop``, ``error_mid``) or written after (``malformed``).
    """
    if behaviour.error_first:
        await sink.write(error())
        return
    delay = behaviour.delay_ms / 1000
    request = sink.request
    malformed_pending = behaviour.malformed is not None
    wrote_token = False
    for frame in frames:
        if not frame.lead:
            tokens = sink.tokens
            if behaviour.drop is not None and tokens >= behaviour.drop:
                await sink.reset()
                return
            if behaviour.error_mid is not None and tokens >= behaviour.error_mid:
                await sink.write(error())
                return
            if malformed_pending and tokens >= (behaviour.malformed or 0):
                malformed_pending = False
                await sink.write(malformed())
        if frame.tokens:
            if wrote_token and delay:
                await pause(request, delay)
            wrote_token = True
        await sink.write(frame.data, frame.tokens)


async def answer_fault(
    sink: Sink,
    behaviour: Behaviour,
    headers: Mapping[str, str],
    error_body: Callable[[int], bytes],
) -> bool:
    """Apply ``first``, ``hang``, ``html`` and ``status``; return whether the request is answered.

    ``error_body(status)`` renders the provider's own error body for an HTTP status.
    """
    if behaviour.first_ms:
        await pause(sink.request, behaviour.first_ms / 1000)
    if behaviour.hang:
        await hang(sink.request)
    if behaviour.html:
        await sink.send_body(502, {**headers, "Content-Type": "text/html"}, _HTML_BODY)
        return True
    if behaviour.status is not None:
        error_headers = {**headers, "Content-Type": "application/json"}
        if behaviour.retry_after is not None:
            error_headers["Retry-After"] = str(behaviour.retry_after)
        await sink.send_body(behaviour.status, error_headers, error_body(behaviour.status))
        return True
    return False
