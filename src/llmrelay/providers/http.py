"""The one pooled upstream HTTP client, and the one place its errors become gateway errors.

aiohttp was chosen over httpx by measurement (bench/upstream_client.py, docs/performance.md): on
this gateway's pattern (small JSON POSTs and SSE reads over kept-alive loopback connections) it
spends a fraction of httpx's CPU per request. Timeouts are the three of the contract — connect,
first byte (response headers) and idle between body reads — and never a total cap. aiohttp sets
TCP_NODELAY on every connection it opens (``aiohttp.base_protocol``), which a test pins.
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
    max_connections: int = 1024
    max_connections_per_host: int = 256
    keepalive_seconds: float = 30.0


class UpstreamResponse:
    """An upstream answer whose body is read with the idle timeout between reads."""

    __slots__ = ("_idle", "_provider", "_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, idle: float, provider: str) -> None:
        self._response = response
        self._idle = idle
        self._provider = provider
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    @property
    def content_type(self) -> str:
        return self._response.content_type

    async def read(self) -> bytes:
        try:
            async with asyncio.timeout(self._idle):
                return await self._response.read()
        except BaseException as exc:
            raise translate(exc, self._provider, reading=True) from exc

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        idle = self._idle
        while True:
            try:
                async with asyncio.timeout(idle):
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
        timeout = aiohttp.ClientTimeout(
            total=None, connect=None, sock_connect=timeouts.connect, sock_read=None
        )
        session = self._session
        assert session is not None, "UpstreamClient.start() was not called"
        try:
            async with asyncio.timeout(timeouts.first_byte + timeouts.connect):
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
