"""One HTTP/1.1 connection: httptools parses, an ASGI application answers.

This is the gateway's own server protocol rather than uvicorn's: on a trivial application uvicorn
spent 25-27 µs of CPU per request at 64 in flight where this spends 16-17 (docs/performance.md).
Here a request costs one scope dict, one cycle object and one task; a response is one
``transport.write`` when its head and body are known together (every JSON answer), and one per
``send`` while streaming.

What it implements of HTTP/1.1 (RFC 9112): persistent connections and pipelining (answered in
order), chunked and ``Content-Length`` bodies both ways, ``Expect: 100-continue``, HEAD, HTTP/1.0
clients (close-delimited streams), back-pressure both ways, and a clear JSON error for a malformed
request or an oversized head. Upgrades (``h2c``, WebSocket) are ignored: the request is answered
as plain HTTP/1.1.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote

import httptools
import orjson

if TYPE_CHECKING:
    from llmrelay.server.runner import ServerState

log = logging.getLogger("llmrelay.server")

Message = dict[str, Any]
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}

MAX_HEAD_BYTES = 64 * 1024
"""A request head (request line and headers) larger than this gets 431 and the connection closes."""

BODY_HIGH_WATER = 256 * 1024
"""Body bytes buffered before reading pauses until the application takes them."""

MAX_PIPELINED = 16
"""Requests parsed ahead of the one being answered before reading pauses."""

_REASONS = {
    100: b"Continue", 200: b"OK", 201: b"Created", 202: b"Accepted", 204: b"No Content",
    301: b"Moved Permanently", 302: b"Found", 303: b"See Other", 304: b"Not Modified",
    307: b"Temporary Redirect", 308: b"Permanent Redirect", 400: b"Bad Request",
    401: b"Unauthorized", 402: b"Payment Required", 403: b"Forbidden", 404: b"Not Found",
    405: b"Method Not Allowed", 408: b"Request Timeout", 409: b"Conflict",
    413: b"Content Too Large",
    415: b"Unsupported Media Type", 422: b"Unprocessable Content", 429: b"Too Many Requests",
    431: b"Request Header Fields Too Large", 500: b"Internal Server Error", 501: b"Not Implemented",
    502: b"Bad Gateway", 503: b"Service Unavailable", 504: b"Gateway Timeout",
}  # fmt: skip
_STATUS_LINES: dict[int, bytes] = {
    code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in _REASONS.items()
}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_CHUNKED_END = b"0\r\n\r\n"
_NO_BODY_STATUSES = frozenset({204, 304})


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        if not 100 <= status <= 999:
            raise RuntimeError(f"invalid HTTP status {status}")
        line = b"HTTP/1.1 %d \r\n" % status
    return line


def error_response(status: int, error_type: str, message: str) -> bytes:
    """A whole response in the contract's error shape, closing the connection."""
    body = orjson.dumps(
        {"error": {"code": status, "type": error_type, "message": message, "param": None}}
    )
    return b"".join(
        (
            status_line(status),
            b"content-type: application/json\r\ncontent-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


class RequestCycle:
    """One request: its ASGI scope, its body as it arrives, and its response as it is sent."""

    __slots__ = (
        "_body",
        "_body_size",
        "_chunked",
        "_conn",
        "_continue",
        "_end_given",
        "_head",
        "_head_only",
        "_receive_waiter",
        "body_complete",
        "disconnected",
        "keep_alive",
        "response_complete",
        "response_started",
        "scope",
        "status",
    )

    def __init__(
        self, conn: HttpProtocol, scope: dict[str, Any], keep_alive: bool, expects: bool
    ) -> None:
        self._conn = conn
        self.scope = scope
        self.keep_alive = keep_alive
        self._continue = expects  # a 100 Continue is owed when the body is first asked for
        self._head_only = scope["method"] == "HEAD"
        self._body: list[bytes] = []
        self._body_size = 0
        self._receive_waiter: asyncio.Future[None] | None = None
        self._chunked = False
        self._end_given = False
        self._head: Any = None  # the response's headers, written with its first body bytes
        self.body_complete = False
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.status = 0

    # -- the request body (called by the protocol) ----------------------------------------------

    def feed_body(self, data: bytes) -> None:
        self._body.append(data)
        self._body_size += len(data)
        if self._body_size > BODY_HIGH_WATER:
            self._conn.pause_reading()
        self._wake()

    def end_body(self) -> None:
        self.body_complete = True
        self._wake()

    def lose_connection(self) -> None:
        self.disconnected = True
        self._wake()

    def _wake(self) -> None:
        waiter = self._receive_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ASGI -------------------------------------------------------------------------------------

    async def receive(self) -> Message:
        while True:
            if self.disconnected or self.response_complete:
                return {"type": "http.disconnect"}
            chunks = self._body
            if chunks or (self.body_complete and not self._end_given):
                body = b"" if not chunks else chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._body = []
                if self._body_size > BODY_HIGH_WATER:
                    self._conn.resume_reading()
                self._body_size = 0
                complete = self._end_given = self.body_complete
                return {"type": "http.request", "body": body, "more_body": not complete}
            # Everything given: wait for more body, or (once it ended) for the client to leave.
            if self._continue:
                self._continue = False
                self._conn.write(_CONTINUE)
            waiter = self._receive_waiter = self._conn.loop.create_future()
            try:
                await waiter
            finally:
                self._receive_waiter = None

    async def send(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.body":
            if not self.response_started:
                raise RuntimeError("http.response.body before http.response.start")
            if self.response_complete:
                raise RuntimeError("http.response.body after the response was complete")
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            conn = self._conn
            if conn.write_paused:
                await conn.drain()
            if self.disconnected:
                if not more:
                    self.response_complete = True
                return  # the application learns of it from receive(), as the ASGI spec has it
            head = self._head
            if head is not None:
                self._head = None
                self._send_first(head, body, more)
            elif self._head_only:
                pass
            elif self._chunked:
                if body:
                    conn.write(b"%x\r\n%b\r\n%s" % (len(body), body, b"" if more else _CHUNKED_END))
                elif not more:
                    conn.write(_CHUNKED_END)
            elif body:
                conn.write(body)
            if not more:
                self.response_complete = True
                self._wake()
                conn.response_done(self)
        elif kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            self.response_started = True
            self.status = message["status"]
            self._head = message.get("headers", ())
        else:
            raise RuntimeError(f"unexpected ASGI message {kind!r}")

    def _send_first(self, headers: Any, body: bytes, more: bool) -> None:
        """The head and the first body bytes, in one write."""
        status = self.status
        lines = [status_line(status)]
        length_known = False
        for name, value in headers:
            lowered = name.lower()
            if lowered == b"content-length":
                length_known = True
            elif lowered == b"connection":
                if value.lower() == b"close":
                    self.keep_alive = False
                continue  # the server owns the connection header
            lines.append(b"%s: %s\r\n" % (name, value))
        if len(lines) != b"".join(lines).count(b"\n"):
            raise RuntimeError("a response header contains a line break")
        conn = self._conn
        lines.append(conn.state.date_header)
        no_body = status in _NO_BODY_STATUSES or 100 <= status < 200
        if not length_known and not no_body:
            if not more:
                lines.append(b"content-length: %d\r\n" % len(body))
            elif self.scope["http_version"] == "1.1":
                self._chunked = True
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                self.keep_alive = False  # an HTTP/1.0 stream ends when the connection does
        if not self.keep_alive or conn.state.stopping:
            self.keep_alive = False
            lines.append(b"connection: close\r\n")
        elif self.scope["http_version"] == "1.0":
            lines.append(b"connection: keep-alive\r\n")
        lines.append(b"\r\n")
        if self._head_only or no_body:
            conn.write(b"".join(lines))
        elif self._chunked:
            if body:
                lines.append(b"%x\r\n" % len(body))
                lines.append(body)
                lines.append(b"\r\n" if more else b"\r\n" + _CHUNKED_END)
            elif not more:
                lines.append(_CHUNKED_END)
            conn.write(b"".join(lines))
        else:
            lines.append(body)
            conn.write(b"".join(lines))


class HttpProtocol(asyncio.Protocol):
    """An HTTP/1.1 server connection running an ASGI application per request."""

    __slots__ = (
        "_current",
        "_drain_waiter",
        "_expects",
        "_head_bytes",
        "_headers",
        "_parser",
        "_parsing",
        "_pipeline",
        "_reading_paused",
        "_transport",
        "_url",
        "app",
        "client",
        "idle_since",
        "loop",
        "server",
        "state",
        "write_paused",
    )

    def __init__(self, app: Any, state: ServerState, loop: asyncio.AbstractEventLoop) -> None:
        self.app = app
        self.state = state
        self.loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._expects = False
        self._head_bytes = 0
        self._parsing: RequestCycle | None = None  # the request whose body is arriving
        self._current: RequestCycle | None = None  # the request being answered
        self._pipeline: deque[RequestCycle] = deque()
        self._reading_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.write_paused = False
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.idle_since: float | None = None

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.client = (str(peer[0]), int(peer[1]))
        if isinstance(local, tuple):
            self.server = (str(local[0]), int(local[1]))
        self.idle_since = self.loop.time()
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.state.connections.discard(self)
        current = self._current
        if current is not None:
            current.lose_connection()
        parsing = self._parsing
        if parsing is not None and parsing is not current:
            parsing.lose_connection()
        self._pipeline.clear()  # requests parsed ahead are never answered: nobody listens
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def data_received(self, data: bytes) -> None:
        self.idle_since = None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            # The request asked to switch protocols; it was answered as HTTP/1.1, and what
            # follows it is read as the next request.
            offset = upgrade.args[0] if upgrade.args else len(data)
            self._parser = httptools.HttpRequestParser(self)
            if offset < len(data):
                self.data_received(data[offset:])
        except httptools.HttpParserError as exc:
            # httptools wraps what a callback raised in a parser error of its own.
            if isinstance(exc.__cause__ or exc.__context__, _HeadTooLarge):
                self._reject(
                    431,
                    "invalid_request_error",
                    f"the request line and headers are larger than {MAX_HEAD_BYTES} bytes",
                )
            else:
                self._reject(400, "invalid_request_error", f"malformed HTTP request: {exc}")

    def eof_received(self) -> bool | None:
        return False  # a half-closed client gets no answer it could read: close

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._expects = False
        self._head_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self._expects = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self._parser
        url = self._url
        if url[:1] == b"/":
            raw_path, _, query = url.partition(b"?")
        else:  # absolute-form (as sent to a proxy) or "*"
            parsed = httptools.parse_url(url)
            raw_path, query = parsed.path or b"/", parsed.query or b""
        text = raw_path.decode("latin-1")
        scope = {
            "type": "http",
            "asgi": ASGI_VERSION,
            "http_version": parser.get_http_version(),
            "server": self.server,
            "client": self.client,
            "scheme": "http",
            "method": parser.get_method().decode("ascii"),
            "root_path": "",
            "path": unquote(text) if "%" in text else text,
            "raw_path": raw_path,
            "query_string": query,
            "headers": self._headers,
            "state": {},
        }
        cycle = RequestCycle(self, scope, parser.should_keep_alive(), self._expects)
        self._parsing = cycle
        if self._current is None:
            self._start(cycle)
        else:
            self._pipeline.append(cycle)
            if len(self._pipeline) >= MAX_PIPELINED:
                self.pause_reading()

    def on_body(self, body: bytes) -> None:
        parsing = self._parsing
        if parsing is not None:
            parsing.feed_body(body)

    def on_message_complete(self) -> None:
        parsing = self._parsing
        if parsing is not None:
            parsing.end_body()
            self._parsing = None

    # -- answering ---------------------------------------------------------------------------------

    def _start(self, cycle: RequestCycle) -> None:
        self._current = cycle
        self.state.tasks.add(self.loop.create_task(self._run(cycle)))

    async def _run(self, cycle: RequestCycle) -> None:
        try:
            await self.app(cycle.scope, cycle.receive, cycle.send)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError) and self.state.stopping:
                pass  # the graceful shutdown ran out of time
            else:
                log.exception(
                    "the application failed on %s %s", cycle.scope["method"], cycle.scope["path"]
                )
            if not cycle.response_started and not cycle.disconnected:
                cycle.response_started = cycle.response_complete = True
                self.write(
                    error_response(500, "server_error", "the gateway failed on this request")
                )
            self.close()
            if not isinstance(exc, Exception):
                raise
        else:
            if not cycle.response_complete and not cycle.disconnected:
                if not cycle.response_started:
                    log.error("the application sent no response to %s", cycle.scope["path"])
                    self.write(error_response(500, "server_error", "the gateway sent no response"))
                self.close()  # a response cut short: the client must not read past it
        finally:
            task = asyncio.current_task()
            if task is not None:
                self.state.tasks.discard(task)

    def response_done(self, cycle: RequestCycle) -> None:
        if not cycle.keep_alive:
            self.close()
            return
        if cycle is self._parsing:
            # Answered before its body was read to the end: the rest of it cannot be told from
            # the next request without reading it, so the connection ends here.
            self.close()
            return
        self._current = None
        if self._pipeline:
            self._start(self._pipeline.popleft())
            if len(self._pipeline) < MAX_PIPELINED and self._reading_paused:
                self.resume_reading()
        else:
            self.idle_since = self.loop.time()
            if self.state.stopping:
                self.close()

    def _reject(self, status: int, error_type: str, message: str) -> None:
        """A request the parser refused: answer it (unless another answer is under way), close."""
        if self._current is None and self._transport is not None:
            self.write(error_response(status, error_type, message))
        self.close()

    def _count_head(self, size: int) -> None:
        self._head_bytes += size
        if self._head_bytes > MAX_HEAD_BYTES:
            raise _HeadTooLarge

    # -- transport ---------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self._transport
        if transport is not None:
            transport.write(data)

    async def drain(self) -> None:
        if not self.write_paused or self._transport is None:
            return
        waiter = self._drain_waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self._drain_waiter = None

    def pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    @property
    def busy(self) -> bool:
        return self._current is not None

    def close(self) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            transport.close()

    def abort(self) -> None:
        transport = self._transport
        if transport is not None:
            transport.abort()


class _HeadTooLarge(Exception):
    pass
