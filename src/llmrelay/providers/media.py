"""Fetching a client's image URL for a provider that only takes inline bytes (Gemini).

The gateway then makes a request on the client's behalf, so it must not become a way into the
network it runs in: every address a host name resolves to must be public (no loopback, private,
link-local, shared or reserved range, IPv4-mapped forms included), checked by the resolver the
connection itself uses so a second DNS answer cannot differ from the checked one; IP-literal hosts
are checked before connecting; each redirect is checked again. The body is capped in size, the
whole fetch in time, and only ``image/*`` answers are accepted.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from llmrelay.core.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolve = Callable[[str, int], Awaitable[list[str]]]
"""``(host, port)`` → the IP addresses (as text) the host name resolves to."""

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
# What browsers sniff when a server sends no usable Content-Type.
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


@dataclass(frozen=True, slots=True)
class FetchLimits:
    max_bytes: int = 10 * 1024 * 1024
    timeout_seconds: float = 10.0
    max_redirects: int = 3


class FetchRefused(Exception):
    """The URL may not be fetched, or its answer is unusable; the message says why."""


def is_public_address(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class _GuardedResolver(AbstractResolver):
    """aiohttp's resolver hook: the addresses it returns are the ones connected to."""

    def __init__(self, resolve: Resolve, allow: Callable[[IPAddress], bool]) -> None:
        self._resolve = resolve
        self._allow = allow

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = await self._resolve(host, port)
        if not addresses:
            raise FetchRefused(f"{host} does not resolve")
        results: list[ResolveResult] = []
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if not self._allow(address):
                raise FetchRefused(f"{host} resolves to a non-public address ({address})")
            results.append(
                {
                    "hostname": host,
                    "host": str(address),
                    "port": port,
                    "family": socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                    "proto": 0,
                    "flags": socket.AI_NUMERICHOST,
                }
            )
        return results

    async def close(self) -> None:
        return None


class ImageFetcher:
    """One per provider that needs it; its connection pool is made on first use."""

    def __init__(
        self,
        limits: FetchLimits | None = None,
        *,
        resolve: Resolve = system_resolve,
        allow: Callable[[IPAddress], bool] = is_public_address,
    ) -> None:
        self._limits = limits or FetchLimits()
        self._resolve = resolve
        self._allow = allow
        self._session: aiohttp.ClientSession | None = None

    async def fetch_all(self, urls: Iterable[tuple[str, str]]) -> dict[str, tuple[str, str]]:
        """``(url, param)`` pairs → ``{url: (mime type, base64 data)}``; a failure is a 400."""
        unique = dict(urls)
        results = await asyncio.gather(*(self.fetch(url, param) for url, param in unique.items()))
        return dict(zip(unique, results, strict=True))

    async def fetch(self, url: str, param: str) -> tuple[str, str]:
        try:
            async with asyncio.timeout(self._limits.timeout_seconds):
                mime, data = await self._fetch(url)
        except FetchRefused as exc:
            raise InvalidRequest(
                f"'{param}': the image URL cannot be used: {exc}", param=param
            ) from None
        except TimeoutError:
            raise InvalidRequest(
                f"'{param}': fetching the image took longer than "
                f"{self._limits.timeout_seconds:g}s; send it inline as a data: URL",
                param=param,
            ) from None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise InvalidRequest(
                f"'{param}': the image could not be fetched ({exc.__class__.__name__}); send it "
                "inline as a data: URL",
                param=param,
            ) from None
        return mime, base64.b64encode(data).decode("ascii")

    async def _fetch(self, url: str) -> tuple[str, bytes]:
        session = self._get_session()
        for _ in range(self._limits.max_redirects + 1):
            self._check_url(url)
            async with session.get(url, allow_redirects=False) as response:
                if response.status in _REDIRECTS and "location" in response.headers:
                    url = urljoin(url, response.headers["location"])
                    continue
                if response.status != 200:
                    raise FetchRefused(f"the image server answered HTTP {response.status}")
                data = await self._read_capped(response)
                return _image_type(response.content_type, data), data
        raise FetchRefused(f"more than {self._limits.max_redirects} redirects")

    def _check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise FetchRefused("only http and https URLs can be fetched")
        try:
            literal = ipaddress.ip_address(parts.hostname)
        except ValueError:
            return  # a name: the resolver checks what it resolves to
        if not self._allow(literal):
            raise FetchRefused(f"{literal} is not a public address")

    async def _read_capped(self, response: aiohttp.ClientResponse) -> bytes:
        cap = self._limits.max_bytes
        if response.content_length is not None and response.content_length > cap:
            raise FetchRefused(f"the image is larger than {cap} bytes")
        body = bytearray()
        async for piece in response.content.iter_chunked(64 * 1024):
            body += piece
            if len(body) > cap:
                raise FetchRefused(f"the image is larger than {cap} bytes")
        return bytes(body)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(
                resolver=_GuardedResolver(self._resolve, self._allow), use_dns_cache=False
            )
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=None)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _image_type(content_type: str, data: bytes) -> str:
    if content_type.startswith("image/"):
        return content_type
    for signature, mime in _SIGNATURES:
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise FetchRefused(f"the URL answered {content_type or 'no content type'}, not an image")
