"""The one pooled upstream HTTP client, and the one place its errors become gateway errors.

The client is the gateway's own lean HTTP/1.1 client (``providers/http1.py``), chosen by
measurement: on this gateway's pattern (small JSON POSTs and SSE reads over kept-alive
connections) aiohttp's client spent about 150 µs of CPU per request and httpx several times that
(bench/upstream_client.py, docs/performance.md); ``http1`` spends a fraction of it. Timeouts are
the three of the contract — connect, first byte (response headers) and idle between body reads —
and never a total cap. Every connection has TCP_NODELAY set, which a test pins.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from llmrelay.config import Timeouts
from llmrelay.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from llmrelay.providers.http1 import (
    BadResponse,
    ConnectFailed,
    Connection,
    Decoder,
    Disconnected,
    Pool,
    ReadTimeout,
    Target,
)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """The pool's bounds. A stream holds its upstream connection for its whole life, so the
    bounds are sized for many long idle streams (10 000 open streams is a tested figure, see
    docs/performance.md); a request past them waits for a connection."""

    max_connections: int = 16384
    keepalive_seconds: float = 30.0


class UpstreamResponse:
    """An upstream answer whose body is read with the idle timeout between reads."""

    __slots__ = ("_conn", "_decoder", "_pool", "_provider", "headers", "status")

    def __init__(self, conn: Connection, pool: Pool, provider: str) -> None:
        headers = conn.headers
        assert headers is not None
        self._conn = conn
        self._pool = pool
        self._provider = provider
        self.status = conn.status
        self.headers: Mapping[str, str] = headers
        self._decoder = Decoder.for_headers(headers)

    @property
    def content_type(self) -> str:
        value = self.headers.get("content-type")
        if not value:
            return "application/octet-stream"
        return str(value).split(";", 1)[0].strip().lower()

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        parts: list[bytes] = []
        try:
            while True:
                if conn.has_data:
                    parts.append(conn.take())  # taking keeps the socket reading
                if conn.complete:
                    break
                await conn.wait_data()
            data = parts[0] if len(parts) == 1 else b"".join(parts)
            if self._decoder is not None:
                data = self._decoder.feed(data) + self._decoder.flush()
            return data
        except BaseException as exc:
            raise translate(exc, self._provider, reading=True) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives: everything buffered since the previous chunk, in one piece."""
        conn = self._conn
        decoder = self._decoder
        while True:
            try:
                if not conn.has_data:
                    if conn.complete:
                        break
                    await conn.wait_data()
                    if not conn.has_data:
                        break  # complete with nothing more
                data = conn.take()
                if decoder is not None:
                    data = decoder.feed(data)
            except BaseException as exc:
                raise translate(exc, self._provider, reading=True) from exc
            if data:
                yield data
        if decoder is not None:
            try:
                tail = decoder.flush()
            except BaseException as exc:
                raise translate(exc, self._provider, reading=True) from exc
            if tail:
                yield tail

    def close(self) -> None:
        """Done with the answer: the connection is pooled if it was read whole, else dropped."""
        self._pool.release(self._conn)

    def release(self) -> None:
        self._pool.release(self._conn)


class UpstreamClient:
    """Built once at start-up; every provider shares its connection pool."""

    def __init__(
        self, limits: ClientLimits | None = None, tls: ssl.SSLContext | None = None
    ) -> None:
        self._limits = limits or ClientLimits()
        self._tls = tls
        self._pool: Pool | None = None
        self._targets: dict[str, Target] = {}

    @property
    def pool(self) -> Pool:
        assert self._pool is not None, "UpstreamClient.start() was not called"
        return self._pool

    def start(self) -> None:
        """Create the pool (the app calls this at start-up)."""
        limits = self._limits
        self._pool = Pool(limits.max_connections, limits.keepalive_seconds, self._tls)

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        provider: str,
    ) -> UpstreamResponse:
        """Send the request and wait for the response headers (the first-byte timeout)."""
        pool = self._pool
        assert pool is not None, "UpstreamClient.start() was not called"
        try:
            target = self._targets.get(url)
            if target is None:
                target = self._targets[url] = Target.parse(url)
            head = _request_head(target, headers, len(body))
            while True:
                conn, reused = await pool.acquire(target, timeouts.connect)
                try:
                    conn.send(head, body, timeouts.first_byte, timeouts.idle)
                    await conn.wait_headers()
                except Disconnected as exc:
                    pool.discard(conn)
                    if reused and not exc.bytes_received:
                        continue  # the server closed the idle connection as we reused it
                    raise
                except BaseException:
                    pool.discard(conn)
                    raise
                return UpstreamResponse(conn, pool, provider)
        except BaseException as exc:
            raise translate(exc, provider, reading=False) from exc

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _request_head(target: Target, headers: Mapping[str, str], length: int) -> bytes:
    lines = [target.request_line]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(b"accept-encoding: gzip, deflate\r\ncontent-length: %d\r\n\r\n" % length)
    return b"".join(lines)


def translate(exc: BaseException, provider: str, *, reading: bool) -> BaseException:
    """Client and socket failures → the gateway's error tree. Cancellation passes through."""
    if isinstance(exc, asyncio.CancelledError | UpstreamError):
        return exc
    if isinstance(exc, ReadTimeout | TimeoutError):
        between = exc.headers_received if isinstance(exc, ReadTimeout) else reading
        what = "between two reads of the body" if between else "before the first byte"
        return UpstreamTimeout(f"provider {provider!r} timed out {what}", provider=provider)
    if isinstance(exc, ConnectFailed):
        return UpstreamUnavailable(
            f"cannot connect to provider {provider!r}: {exc}", provider=provider
        )
    if isinstance(exc, Disconnected):
        return UpstreamProtocolError(
            f"provider {provider!r} closed the connection mid-response", provider=provider
        )
    if isinstance(exc, BadResponse):
        return UpstreamProtocolError(
            f"provider {provider!r} sent a malformed HTTP response: {exc}", provider=provider
        )
    if isinstance(exc, OSError):
        return UpstreamProtocolError(
            f"provider {provider!r} connection failed: {exc.__class__.__name__}",
            provider=provider,
        )
    return exc
