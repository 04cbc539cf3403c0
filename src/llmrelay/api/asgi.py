"""The ASGI edge: typed aliases, request reading with a size cap, response writing.

The gateway speaks raw ASGI rather than through a framework: the hot path is one dict lookup to a
handler, one body read and one or a few ``send`` calls, and every layer a framework would add costs
latency that the gateway exists to avoid (measured in docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import orjson

from llmrelay.core.errors import GatewayError, InvalidRequest, PayloadTooLarge, RequestTimeout

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

JSON_HEADERS: Headers = [(b"content-type", b"application/json")]
SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ClientDisconnected(Exception):
    """The client went away before the request body was complete."""


class BodyDeadlines:
    """The time limits of the body reads in progress, kept by one timer for all of them.

    A timer per read (``asyncio.timeout``, or even a bare ``call_later``) cost 3-6 µs a request
    on uvloop, nearly all of it arming and cancelling a timer that almost never fires: a body
    usually arrives with its headers. Here a read only enters and leaves a dict; the one timer
    is due at the earliest deadline and, when it fires, cancels the reads past theirs.
    """

    __slots__ = ("_expired", "_pending", "_timer", "_timer_at", "_timer_loop")

    def __init__(self) -> None:
        self._pending: dict[asyncio.Task[Any], float] = {}
        self._expired: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._timer_loop: asyncio.AbstractEventLoop | None = None

    def add(self, task: asyncio.Task[Any], time_limit: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + time_limit
        self._pending[task] = deadline
        # Another loop than the timer's: an app served again after its first loop closed.
        if self._timer is None or deadline < self._timer_at or loop is not self._timer_loop:
            self._arm(loop, deadline)

    def discard(self, task: asyncio.Task[Any]) -> None:
        """The read ended (however it ended)."""
        if self._pending.pop(task, None) is None:
            self._expired.discard(task)

    def expired(self, task: asyncio.Task[Any]) -> bool:
        """Whether the read's deadline cancelled the task."""
        return task in self._expired

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire, loop)
        self._timer_at = when
        self._timer_loop = loop

    def _fire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        now = loop.time()
        earliest = None
        for task, deadline in list(self._pending.items()):
            if deadline <= now:
                del self._pending[task]
                self._expired.add(task)
                task.cancel()
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self._arm(loop, earliest)


class Request:
    """What a handler needs of the ASGI scope, decoded lazily."""

    __slots__ = ("_deadlines", "_headers", "_query", "path_params", "receive", "scope")

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        path_params: dict[str, str],
        deadlines: BodyDeadlines | None = None,
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.path_params = path_params
        self._deadlines = deadlines if deadlines is not None else BodyDeadlines()
        self._headers: dict[bytes, bytes] | None = None
        self._query: dict[str, str] | None = None

    @property
    def method(self) -> str:
        method: str = self.scope["method"]
        return method

    def header(self, name: bytes) -> bytes | None:
        if self._headers is None:
            self._headers = dict(self.scope["headers"])
        return self._headers.get(name)

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            raw: bytes = self.scope.get("query_string", b"")
            self._query = dict(parse_qsl(raw.decode("latin-1"))) if raw else {}
        return self._query

    def api_key(self) -> str | None:
        """The client's key from any header style of the contract, or ``?key=``."""
        auth = self.header(b"authorization")
        if auth:
            scheme, _, token = auth.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip().decode("latin-1")
        for name in (b"x-api-key", b"apikey", b"x-goog-api-key"):
            value = self.header(name)
            if value:
                return value.strip().decode("latin-1")
        return self.query.get("key")

    async def body(self, limit: int, time_limit: float = 30.0) -> bytes:
        """The whole body, at most ``limit`` bytes (413), within ``time_limit`` seconds (408)."""
        task = asyncio.current_task()
        assert task is not None
        deadlines = self._deadlines
        deadlines.add(task, time_limit)
        try:
            return await self._read_body(limit)
        except asyncio.CancelledError:
            # Ours only if nothing else cancelled the task meanwhile (as asyncio.timeout decides).
            if deadlines.expired(task) and task.uncancel() == 0:
                raise RequestTimeout(
                    f"the request body did not arrive within {time_limit:g} seconds"
                ) from None
            raise
        finally:
            deadlines.discard(task)

    async def _read_body(self, limit: int) -> bytes:
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"the request body is larger than the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected
            chunk: bytes = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(
                        f"the request body is larger than the limit of {limit} bytes"
                    )
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def require_json(self) -> None:
        content_type = self.header(b"content-type")
        if content_type is None:
            return  # curl -d without -H; the body is still checked for JSON
        media = content_type.split(b";", 1)[0].strip().lower()
        if media != b"application/json" and not media.endswith(b"+json"):
            raise InvalidRequest(
                f"unsupported Content-Type {media.decode('latin-1')!r}; send application/json"
            )


async def send_json(
    send: Send, status: int, payload: object, headers: Headers | None = None
) -> None:
    body = orjson.dumps(payload)
    await send_bytes(send, status, body, JSON_HEADERS + (headers or []))


async def send_bytes(send: Send, status: int, body: bytes, headers: Headers) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*headers, (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def error_headers(error: GatewayError, extra: Headers | None = None) -> Headers:
    headers = list(extra or [])
    retry_after = error.retry_after_header()
    if retry_after is not None:
        headers.append((b"retry-after", retry_after.encode()))
    return headers


async def send_openai_error(
    send: Send, error: GatewayError, headers: Headers | None = None
) -> None:
    await send_json(send, error.http_status, error.to_openai(), error_headers(error, headers))
