"""The gateway's own HTTP/1.1 client against servers that answer with exact bytes.

Each server here is a raw asyncio TCP server that reads one request (head and Content-Length
body) and writes a scripted answer, so every framing the client must handle is produced exactly:
chunked, length-delimited, close-delimited, compressed, interim 1xx, keep-alive and close,
malformed, slow and TLS.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
import trustme

from llmrelay.config import Timeouts
from llmrelay.core.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from llmrelay.providers.http import ClientLimits, UpstreamClient
from llmrelay.testing.harness import free_port

BODY = b'{"model":"m","messages":[]}'
HEADERS = {"authorization": "Bearer sk-test", "content-type": "application/json"}
FAST = Timeouts(connect=2, first_byte=2, idle=2)

Answer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]
"""Writes the answer to one request (its head given); returns whether to keep the connection."""


class Server:
    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.connections = 0
        self.closed_by_peer = 0
        self.url = ""
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                if not await self.answer(head, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed_by_peer += 1
        except asyncio.CancelledError:
            pass  # the test is over and the server closes: nothing to report
        finally:
            writer.close()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.tls)
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if self.tls else "http"
        host = "localhost" if self.tls else "127.0.0.1"
        self.url = f"{scheme}://{host}:{port}/v1/chat/completions?x=1"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.sleep(0)


def fixed(raw: bytes, keep: bool = True) -> Answer:
    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return keep

    return answer


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@asynccontextmanager
async def client(
    limits: ClientLimits | None = None, tls: ssl.SSLContext | None = None
) -> AsyncIterator[UpstreamClient]:
    upstream = UpstreamClient(limits, tls)
    upstream.start()
    try:
        yield upstream
    finally:
        await upstream.close()


async def test_request_bytes_and_a_length_delimited_answer_on_one_kept_alive_connection() -> None:
    answer = fixed(ok(b'{"a":1}', b"x-request-id: r1\r\nX-Mixed-Case: v\r\n"))
    async with Server(answer) as srv, client() as upstream:
        for _ in range(3):
            response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
            assert response.status == 200
            assert response.headers["X-Request-Id"] == "r1"
            assert response.headers.get("x-mixed-case") == "v"
            assert await response.read() == b'{"a":1}'
            response.release()
    assert srv.connections == 1
    head = srv.heads[0]
    assert head.startswith(b"POST /v1/chat/completions?x=1 HTTP/1.1\r\n")
    assert b"\r\nhost: 127.0.0.1:" in head
    assert b"\r\nauthorization: Bearer sk-test\r\n" in head
    assert b"\r\ncontent-length: %d\r\n" % len(BODY) in head
    assert srv.bodies == [BODY] * 3


async def test_chunked_answer_is_read_as_it_arrives() -> None:
    gate = asyncio.Event()

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\n\r\n6\r\ndata: \r\n"
        )
        await writer.drain()
        await gate.wait()
        writer.write(b"3\r\n1\n\n\r\n0\r\n\r\n")
        await writer.drain()
        return True

    async with Server(answer) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert response.content_type == "text/event-stream"
        chunks = response.iter_chunks()
        assert await anext(chunks) == b"data: "  # before the rest was even written
        gate.set()
        assert [chunk async for chunk in chunks] == [b"1\n\n"]
        response.close()
        # Read whole: the connection goes back to the pool.
        assert len(upstream.pool.idle_connections()) == 1


async def test_answer_delimited_by_close_and_connection_close_is_not_pooled() -> None:
    raw = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n{"until":"close"}'
    async with Server(fixed(raw, keep=False)) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert await response.read() == b'{"until":"close"}'
        response.release()
        assert upstream.pool.idle_connections() == []
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert await response.read() == b'{"until":"close"}'
    assert srv.connections == 2


async def test_connection_close_header_is_honoured() -> None:
    answer = fixed(ok(b"{}", b"connection: close\r\n"), keep=False)
    async with Server(answer) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert await response.read() == b"{}"
        response.release()
        assert upstream.pool.idle_connections() == []
        assert upstream.pool.open_connections == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_answers_are_decoded(encoding: str) -> None:
    payload = b'{"text":"' + b"compressible " * 500 + b'"}'
    packed = gzip.compress(payload) if encoding == "gzip" else zlib.compress(payload)
    raw = ok(packed, b"content-encoding: %s\r\n" % encoding.encode())
    async with Server(fixed(raw)) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert await response.read() == payload
        response.release()
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert b"".join([c async for c in response.iter_chunks()]) == payload
    assert b"accept-encoding: gzip, deflate" in srv.heads[0]


async def test_interim_answers_are_skipped() -> None:
    raw = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: x\r\n\r\n" + ok(b"{}")
    async with Server(fixed(raw)) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert response.status == 200
        assert "link" not in response.headers
        assert await response.read() == b"{}"


async def test_error_status_keeps_its_headers_and_body() -> None:
    raw = (
        b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-type: application/json\r\n"
        b'content-length: 13\r\n\r\n{"error":"x"}'
    )
    async with Server(fixed(raw)) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert response.status == 429
        assert response.headers["retry-after"] == "7"
        assert await response.read() == b'{"error":"x"}'


async def test_a_stale_pooled_connection_is_replaced_without_an_error() -> None:
    """The server closes an idle kept-alive connection; the next request must not fail."""
    async with Server(fixed(ok(b"{}"), keep=False)) as srv, client() as upstream:
        # The answer says nothing about closing, so the client pools the connection, which the
        # server then closes: the next request finds it dead (or dying) and takes a new one.
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert await response.read() == b"{}"
        response.release()
        await asyncio.sleep(0.05)
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert await response.read() == b"{}"
    assert srv.connections == 2


async def test_a_server_that_drops_a_fresh_connection_is_a_protocol_error() -> None:
    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async with Server(answer) as srv, client() as upstream:
        with pytest.raises(UpstreamProtocolError, match="closed the connection"):
            await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
    assert srv.connections == 1  # no blind retry on a fresh connection


async def test_truncated_body_is_a_protocol_error() -> None:
    raw = b'HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{"short":'
    async with Server(fixed(raw, keep=False)) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        with pytest.raises(UpstreamProtocolError, match="mid-response"):
            await response.read()


async def test_garbage_is_a_protocol_error() -> None:
    answer = fixed(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", keep=False)
    async with Server(answer) as srv, client() as upstream:
        with pytest.raises(UpstreamProtocolError, match="malformed"):
            await upstream.post(srv.url, BODY, HEADERS, FAST, "p")


async def test_connect_refused_and_bad_urls_are_unavailable() -> None:
    async with client() as upstream:
        with pytest.raises(UpstreamUnavailable):
            await upstream.post(f"http://127.0.0.1:{free_port()}/x", BODY, HEADERS, FAST, "p")
        with pytest.raises(UpstreamUnavailable):
            await upstream.post("ftp://example.invalid/x", BODY, HEADERS, FAST, "p")
        assert upstream.pool.open_connections == 0


async def test_idle_timer_waits_while_the_gateway_holds_reading_back() -> None:
    """A large answer read slowly pauses the socket; the pause is not the provider's silence."""
    payload = b"x" * (1024 * 1024)
    async with Server(fixed(ok(payload))) as srv, client() as upstream:
        timeouts = Timeouts(connect=2, first_byte=2, idle=0.2)
        response = await upstream.post(srv.url, BODY, HEADERS, timeouts, "p")
        received = 0
        async for chunk in response.iter_chunks():
            received += len(chunk)
            await asyncio.sleep(0.3)  # slower than the idle limit between our reads
        assert received == len(payload)


async def test_idle_timeout_between_reads_and_close_drops_the_connection() -> None:
    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        await asyncio.sleep(1)
        return False

    async with Server(answer) as srv, client() as upstream:
        timeouts = Timeouts(connect=2, first_byte=2, idle=0.2)
        response = await upstream.post(srv.url, BODY, HEADERS, timeouts, "p")
        chunks = response.iter_chunks()
        assert await anext(chunks) == b"first"
        with pytest.raises(UpstreamTimeout, match="between two reads"):
            await anext(chunks)
        response.close()
        assert upstream.pool.open_connections == 0


async def test_closing_mid_answer_drops_the_connection_at_once() -> None:
    closed = asyncio.Event()

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n")
        await writer.drain()
        try:
            for _ in range(100):
                await asyncio.sleep(0.01)
                writer.write(b"1\r\nx\r\n")
                await writer.drain()
        except ConnectionError:
            closed.set()
        return False

    async with Server(answer) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert await anext(response.iter_chunks()) == b"first"
        response.close()
        await asyncio.wait_for(closed.wait(), 1)
        assert upstream.pool.open_connections == 0


async def test_cancelled_while_waiting_for_headers_drops_the_connection() -> None:
    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    async with Server(answer) as srv, client() as upstream:
        task = asyncio.ensure_future(upstream.post(srv.url, BODY, HEADERS, FAST, "p"))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert upstream.pool.open_connections == 0


async def test_the_pool_bound_makes_requests_wait_for_a_connection() -> None:
    release = asyncio.Event()

    async def answer(head: bytes, writer: asyncio.StreamWriter) -> bool:
        await release.wait()
        writer.write(ok(b"{}"))
        await writer.drain()
        return True

    async with Server(answer) as srv, client(ClientLimits(max_connections=2)) as upstream:

        async def one() -> bytes:
            response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
            try:
                return await response.read()
            finally:
                response.release()

        tasks = [asyncio.ensure_future(one()) for _ in range(5)]
        await asyncio.sleep(0.2)
        assert upstream.pool.open_connections == 2
        release.set()
        assert await asyncio.gather(*tasks) == [b"{}"] * 5
    assert srv.connections == 2


async def test_https_with_a_verified_certificate() -> None:
    authority = trustme.CA()
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_tls)
    client_tls = ssl.create_default_context()
    authority.configure_trust(client_tls)
    async with Server(fixed(ok(b'{"tls":true}')), tls=server_tls) as srv:
        async with client(tls=client_tls) as upstream:
            response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
            assert await response.read() == b'{"tls":true}'
            response.release()
        assert b"\r\nhost: localhost:" in srv.heads[0]
        # The system trust store does not know this authority: refused, not sent.
        async with client() as untrusting:
            with pytest.raises(UpstreamUnavailable, match="SSL"):
                await untrusting.post(srv.url, BODY, HEADERS, FAST, "p")
    assert len(srv.heads) == 1


async def test_releasing_twice_pools_the_connection_once() -> None:
    async with Server(fixed(ok(b"{}"))) as srv, client() as upstream:
        response = await upstream.post(srv.url, BODY, HEADERS, FAST, "p")
        assert await response.read() == b"{}"
        response.release()
        response.close()
        assert len(upstream.pool.idle_connections()) == 1
        first, second = await asyncio.gather(
            upstream.post(srv.url, BODY, HEADERS, FAST, "p"),
            upstream.post(srv.url, BODY, HEADERS, FAST, "p"),
        )
        assert [await first.read(), await second.read()] == [b"{}", b"{}"]
    assert srv.connections == 2  # the pooled one and one more, never one shared by two requests
