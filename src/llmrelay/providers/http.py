"""The one pooled upstream HTTP client, and the one place its errors become gateway errors.

aiohttp was chosen over httpx by measurement (bench/upstream_client.py, docs/performance.md): on
this gateway's pattern (small JSON POSTs and SSE reads over kept-alive loopback connections) it
spends a fraction of httpx's CPU per request. Timeouts are the three of the contract — connect,
first byte (response headers) and idle between body reads — and never a total cap. aiohttp sets
TCP_NODELAY on every connection it opens (``aiohttp.base_protocol``), which a test pins.

The first-byte and idle timeouts are one mechanism, aiohttp's own ``sock_read``: a single timer
per connection that its protocol re-arms whenever bytes arrive (and stops while the gateway itself
holds reading back). It starts as the first-byte limit and becomes the idle limit once the
headers are in. An ``asyncio.timeout`` around every read would cost a context object, a timer and
a task cancel-and-uncancel each time (docs/performance.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import aiohttp

from llmrelay.config import Timeouts
from llmrelay.core.errors import (
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnavailable,
)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """The pool's bounds. A stream holds its upstream connection for its whole life, so the
    bounds are sized for many long idle streams (10 000 open streams is a tested figure, see
    docs/performance.md); a request past them waits for a connection."""

    max_connections: int = 16384
    max_connections_per_host: int = 16384
    keepalive_seconds: float = 30.0


class UpstreamResponse:
    """An upstream answer whose body is read with the idle timeout between reads."""

    __slots__ = ("_provider", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, idle: float, provider: str) -> None:
        self._response = response
        self._provider = provider
        _switch_to_idle_timeout(response, idle)
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def content_type(self) -> str:
        return self._response.content_type

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except BaseException as exc:
            raise translate(exc, self._provider, reading=True) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        while True:
            try:
                chunk = await content.readany()
            except BaseException as exc:
                raise translate(exc, self._provider, reading=True) from exc
            if not chunk:
                return
            yield chunk

    def close(self) -> None:
        """Drop the connection at once (never returned to the pool half-read)."""
        self._response.close()

    def release(self) -> None:
        self._response.release()


class UpstreamClient:
    """Built once at start-up; every provider shares its connection pool."""

    def __init__(self, limits: ClientLimits | None = None) -> None:
        self._limits = limits or ClientLimits()
        self._session: aiohttp.ClientSession | None = None
        self._timeouts: dict[Timeouts, aiohttp.ClientTimeout] = {}

    def start(self) -> None:
        """Create the pool; it needs the running event loop, so the app calls this at start-up."""
        limits = self._limits
        connector = aiohttp.TCPConnector(
            limit=limits.max_connections,
            limit_per_host=limits.max_connections_per_host,
            keepalive_timeout=limits.keepalive_seconds,
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
            raise_for_status=False,
        )

    async def post(
        self,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        provider: str,
    ) -> UpstreamResponse:
        """Send the request and wait for the response headers (the first-byte timeout)."""
        timeout = self._timeouts.get(timeouts)
        if timeout is None:
            timeout = self._timeouts[timeouts] = aiohttp.ClientTimeout(
                total=None,
                connect=None,
                sock_connect=timeouts.connect,
                sock_read=timeouts.first_byte,
            )
        session = self._session
        assert session is not None, "UpstreamClient.start() was not called"
        try:
            response = await session.post(
                url, data=body, headers=headers, timeout=timeout, allow_redirects=False
            )
        except BaseException as exc:
            raise translate(exc, provider, reading=False) from exc
        return UpstreamResponse(response, timeouts.idle, provider)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _switch_to_idle_timeout(response: aiohttp.ClientResponse, idle: float) -> None:
    """From the headers on, the connection's read timer is the idle limit between reads."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    if protocol is None:
        return  # the whole answer is already in: nothing more to wait for
    protocol.read_timeout = idle
    if not response.content.at_eof():
        # Re-arm now: the timer running since the headers arrived has the first-byte length. At
        # the end of the body aiohttp stops it (an armed timer must not outlive the response,
        # or it would fire on the connection's next request).
        protocol.start_timeout()


def translate(exc: BaseException, provider: str, *, reading: bool) -> BaseException:
    """Library and socket failures → the gateway's error tree. Cancellation passes through."""
    if isinstance(exc, asyncio.CancelledError | UpstreamError):
        return exc
    if isinstance(exc, TimeoutError):
        what = "between two reads of the body" if reading else "before the first byte"
        return UpstreamTimeout(f"provider {provider!r} timed out {what}", provider=provider)
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ServerTimeoutError) and not reading:
        return UpstreamUnavailable(
            f"cannot connect to provider {provider!r}: {exc.__class__.__name__}",
            provider=provider,
        )
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return UpstreamProtocolError(
            f"provider {provider!r} closed the connection mid-response", provider=provider
        )
    if isinstance(exc, aiohttp.ClientError | OSError):
        return UpstreamProtocolError(
            f"provider {provider!r} connection failed: {exc.__class__.__name__}",
            provider=provider,
        )
    return exc
