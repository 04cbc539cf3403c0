"""A lean HTTP/1.1 client connection and its keep-alive pool, on asyncio protocols and httptools.

Why not a library: the gateway's upstream traffic is one narrow pattern (a POST with a small body,
then a JSON answer or an SSE stream read as it arrives, over kept-alive connections), and on that
pattern aiohttp's general-purpose client was the largest single cost of a relayed request, about
150 of the gateway's ~350 µs per request (bench/upstream_client.py, docs/performance.md). This
module does only that pattern: no redirects, cookies, proxies or multipart, and the parsing itself
is llhttp (through httptools, which the server side already uses).

One ``Connection`` is an ``asyncio.Protocol``: the request goes out in one ``write``, httptools
calls back per header and per body piece, and the reader waits on one future at a time. Its read
timer is a single ``call_at`` handle per connection: a read only stamps the time, and the timer,
when it fires, re-arms itself at the last read plus the limit instead of failing, so a steady
stream costs no timer work per read. Reading pauses above a high-water mark (the gateway's client
is slower than the provider) and the timer stops meanwhile: a provider is never blamed for the
gateway's own back-pressure.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import zlib
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

HIGH_WATER = 256 * 1024
"""Buffered body bytes at which the connection stops reading from the socket."""


class ConnectFailed(Exception):
    """The TCP (or TLS) connection could not be made."""


class ReadTimeout(Exception):
    """Nothing arrived within the limit: before the headers, or between two body reads."""

    def __init__(self, headers_received: bool) -> None:
        super().__init__("between two reads" if headers_received else "before the first byte")
        self.headers_received = headers_received


class Disconnected(Exception):
    """The server closed the connection before the answer was complete."""

    def __init__(self, bytes_received: bool) -> None:
        super().__init__("connection closed mid-response" if bytes_received else "no answer")
        self.bytes_received = bytes_received


class BadResponse(Exception):
    """The bytes from the server are not an HTTP/1.x response."""


class ResponseHeaders(Mapping[str, str]):
    """Response headers by lower-case name; a repeated header's values are joined by ``, ``."""

    __slots__ = ("_values",)

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def __getitem__(self, name: str) -> str:
        return self._values[name.lower()]

    def get(self, name: str, default: Any = None) -> Any:
        return self._values.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ResponseHeaders({self._values!r})"


@dataclass(frozen=True, slots=True)
class Target:
    """What a URL means to the pool, parsed once per distinct URL."""

    pool_key: tuple[str, int, bool]
    host: str
    port: int
    tls: bool
    request_line: bytes  # b"POST /path?query HTTP/1.1\r\nhost: ...\r\n"

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConnectFailed(f"not an http(s) URL: {url!r}")
        tls = parts.scheme == "https"
        port = parts.port or (443 if tls else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        host = parts.hostname
        host_header = f"[{host}]" if ":" in host else host
        if parts.port is not None and port != (443 if tls else 80):
            host_header += f":{port}"
        line = f"POST {path} HTTP/1.1\r\nhost: {host_header}\r\n".encode("latin-1")
        return cls((host, port, tls), host, port, tls, line)


class Connection(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection: one request at a time, its answer read as it comes."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool_key: tuple[str, int, bool]) -> None:
        self._loop = loop
        self.pool_key = pool_key
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.discarded = False  # the pool no longer counts it
        self.pooled = False  # idle in the pool
        self.idle_since = 0.0
        # the answer in progress
        self.status = 0
        self._header_names: list[bytes] = []
        self._header_values: list[bytes] = []
        self.headers: ResponseHeaders | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self.complete = False
        self._keep_alive = False
        self.received_any = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        # the read timer
        self._limit = 0.0
        self._idle_limit = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._rearm = False

    # -- asyncio.Protocol -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            # Small requests and SSE events must not wait for Nagle's acknowledgement delay.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.received_any = True
        self._last_read = self._loop.time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(BadResponse(f"unparseable response: {exc}"))
        except httptools.HttpParserUpgrade:
            self._fail(BadResponse("the server switched protocols"))
        if self._rearm:
            # The headers came in this read and the body did not end with them: from now on
            # the (usually shorter) idle limit applies. A whole answer in one read skips this.
            self._rearm = False
            if not self.complete and not self._paused and self._error is None:
                self._restart_timer()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost settles the answer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        self._stop_timer()
        if self.complete or self._error is not None:
            return
        if self.headers is not None and self._ends_at_close():
            self._finish()  # an answer without length or chunking ends when the connection does
            return
        self._fail(Disconnected(self.received_any))

    # -- httptools callbacks --------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_names.append(name)
        self._header_values.append(value)

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200:
            # An interim answer (100 Continue, 103 Early Hints): the real one follows.
            self._header_names.clear()
            self._header_values.clear()
            return
        self.status = status
        values: dict[str, str] = {}
        for raw_name, raw_value in zip(self._header_names, self._header_values, strict=True):
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            previous = values.get(name)
            values[name] = value if previous is None else f"{previous}, {value}"
        self._header_names.clear()
        self._header_values.clear()
        self.headers = ResponseHeaders(values)
        # From the headers on, the limit is the idle one between reads (re-armed after this read).
        self._limit = self._idle_limit
        self._rearm = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered >= HIGH_WATER and not self._paused and self._transport is not None:
            self._paused = True
            self._stop_timer()
            self._transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.headers is None:
            return  # the end of an interim (1xx) answer
        # Asked here: once the callback returns, llhttp has reset the message's flags.
        self._keep_alive = self._parser.should_keep_alive()
        self._finish()

    # -- the request ----------------------------------------------------------------------------

    def send(self, head: bytes, body: bytes, first_byte: float, idle: float) -> None:
        """Write one request and start the first-byte timer."""
        transport = self._transport
        if transport is None or self.closed:
            raise Disconnected(False)
        self.status = 0
        self.headers = None
        self._chunks = []
        self._buffered = 0
        self.complete = False
        self._keep_alive = False
        self.received_any = False
        self._error = None
        self._limit = first_byte
        self._idle_limit = idle
        self._rearm = False
        self._last_read = self._loop.time()
        self._restart_timer()
        transport.write(head + body)  # one send: writelines would make it two system calls

    async def wait_headers(self) -> None:
        while self.headers is None:
            await self._wait()

    def take(self) -> bytes:
        """Every body byte buffered so far (and reading resumes if it had paused)."""
        chunks = self._chunks
        if not chunks:
            return b""
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._buffered = 0
        if self._paused and self._transport is not None:
            self._paused = False
            self._last_read = self._loop.time()
            self._restart_timer()
            self._transport.resume_reading()
        return data

    @property
    def transport(self) -> asyncio.Transport | None:
        return self._transport

    @property
    def has_data(self) -> bool:
        return bool(self._chunks)

    async def wait_data(self) -> None:
        """Until body bytes are buffered, the answer is complete, or it failed."""
        while not self._chunks and not self.complete:
            await self._wait()

    @property
    def reusable(self) -> bool:
        return self.complete and self._error is None and not self.closed and self._keep_alive

    def close(self) -> None:
        self._stop_timer()
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    # -- internals ------------------------------------------------------------------------------

    async def _wait(self) -> None:
        if self._error is not None:
            raise self._error
        waiter = self._waiter = self._loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        if self._error is not None:
            raise self._error

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _finish(self) -> None:
        self.complete = True
        self._stop_timer()
        self._wake()

    def _fail(self, error: BaseException) -> None:
        if self._error is None and not self.complete:
            self._error = error
        self.close()
        self._wake()

    def _ends_at_close(self) -> bool:
        headers = self.headers
        assert headers is not None
        return "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )

    def _restart_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(self._last_read + self._limit, self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        self._timer = None
        if self.complete or self.closed or self._paused:
            return
        due = self._last_read + self._limit
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._on_timer)  # read since: wait on
            return
        self._fail(ReadTimeout(self.headers is not None))


class Decoder:
    """``content-encoding`` gzip or deflate, decoded as the body arrives."""

    __slots__ = ("_zlib",)

    def __init__(self, encoding: str) -> None:
        # gzip: wbits 16+; deflate is zlib-wrapped per the RFC, though some servers send it raw.
        self._zlib = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else 0)

    @staticmethod
    def for_headers(headers: Mapping[str, str]) -> Decoder | None:
        encoding = headers.get("content-encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            return Decoder("gzip")
        if encoding == "deflate":
            return Decoder("deflate")
        return None

    def feed(self, data: bytes) -> bytes:
        try:
            return self._zlib.decompress(data)
        except zlib.error as exc:
            raise BadResponse(f"the compressed body does not decode: {exc}") from None

    def flush(self) -> bytes:
        return self._zlib.flush()


class Pool:
    """Idle connections by (host, port, tls), newest first; a bound on all connections."""

    def __init__(
        self,
        max_connections: int,
        keepalive_seconds: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._max = max_connections
        self._keepalive = keepalive_seconds
        self._idle: dict[tuple[str, int, bool], list[Connection]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._tls = tls  # default: the system's trust store (SSL_CERT_FILE/SSL_CERT_DIR apply)
        self._sweeper: asyncio.TimerHandle | None = None
        self._closing = False

    @property
    def open_connections(self) -> int:
        return self._open

    def idle_connections(self) -> list[Connection]:
        return [conn for conns in self._idle.values() for conn in conns]

    async def acquire(self, target: Target, connect_timeout: float) -> tuple[Connection, bool]:
        """A connection to ``target`` and whether it is a reused one."""
        while True:
            idle = self._idle.get(target.pool_key)
            if idle:
                deadline = time.monotonic() - self._keepalive
                while idle:
                    conn = idle.pop()
                    conn.pooled = False
                    if not conn.closed and conn.idle_since > deadline:
                        return conn, True
                    self._discard(conn)
            if self._open < self._max or self._close_one_idle():
                break
            # At the bound: wait until a connection comes back (perhaps to this host) or closes.
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._open += 1
        try:
            return await self._connect(target, connect_timeout), False
        except BaseException:
            self._released_slot()
            raise

    def release(self, conn: Connection) -> None:
        """Back to the pool if the answer was read whole and the server keeps the connection.

        Releasing twice (``release`` then ``close``) is harmless: a connection is pooled once.
        """
        if conn.pooled or conn.discarded:
            return
        if self._closing or not conn.reusable:
            self._discard(conn)
            return
        conn.pooled = True
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.pool_key, []).append(conn)
        if self._waiters:
            self._wake_one()
        if self._sweeper is None:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._keepalive, self._sweep)

    def discard(self, conn: Connection) -> None:
        self._discard(conn)

    def close(self) -> None:
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conns in self._idle.values():
            for conn in conns:
                self._discard(conn)
        self._idle.clear()

    # -- internals ------------------------------------------------------------------------------

    async def _connect(self, target: Target, limit: float) -> Connection:
        loop = asyncio.get_running_loop()
        tls: ssl.SSLContext | None = None
        if target.tls:
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(limit):
                _, conn = await loop.create_connection(
                    lambda: Connection(loop, target.pool_key),
                    target.host,
                    target.port,
                    ssl=tls,
                    server_hostname=target.host if tls else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"no connection within {limit:g} s") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"{exc.__class__.__name__}: {exc}") from exc
        return conn

    def _discard(self, conn: Connection) -> None:
        if conn.discarded:
            return
        conn.discarded = True
        conn.close()
        self._released_slot()

    def _released_slot(self) -> None:
        self._open -= 1
        self._wake_one()

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_one_idle(self) -> bool:
        for conns in self._idle.values():
            if conns:
                self._discard(conns.pop(0))  # the oldest
                return True
        return False

    def _sweep(self) -> None:
        self._sweeper = None
        deadline = time.monotonic() - self._keepalive
        remaining = 0
        for key, conns in list(self._idle.items()):
            keep = []
            for conn in conns:
                if conn.closed or conn.idle_since <= deadline:
                    self._discard(conn)
                else:
                    keep.append(conn)
            if keep:
                self._idle[key] = keep
                remaining += len(keep)
            else:
                del self._idle[key]
        if remaining and not self._closing:
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_later(self._keepalive, self._sweep)
