"""The pooled upstream client: TCP_NODELAY, pooling, and error translation at its one boundary."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from aiohttp import web

from llmrelay.config import Timeouts
from llmrelay.core.errors import UpstreamTimeout, UpstreamUnavailable
from llmrelay.providers.http import UpstreamClient
from llmrelay.testing.emulator import EmulatorServer
from llmrelay.testing.harness import free_port

BODY = b'{"model":"gpt","messages":[{"role":"user","content":"hi"}]}'
HEADERS = {"authorization": "Bearer sk", "content-type": "application/json"}


async def test_connections_use_tcp_nodelay_and_are_pooled() -> None:
    async with EmulatorServer() as emu:
        client = UpstreamClient()
        client.start()
        try:
            url = emu.base_url + "/v1/chat/completions"
            for _ in range(3):
                response = await client.post(url, BODY, HEADERS, Timeouts(), "emu")
                assert response.status == 200
                await response.read()
                response.release()
            (pooled,) = client.pool.idle_connections()
            assert pooled.transport is not None
            sock = pooled.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
            assert len(emu.requests) == 3  # three requests, one kept-alive connection
        finally:
            await client.close()


async def test_connect_refused_is_unavailable() -> None:
    client = UpstreamClient()
    client.start()
    try:
        with pytest.raises(UpstreamUnavailable):
            await client.post(
                f"http://127.0.0.1:{free_port()}/v1/chat/completions",
                BODY,
                HEADERS,
                Timeouts(),
                "dead",
            )
    finally:
        await client.close()


async def test_first_byte_timeout() -> None:
    async with EmulatorServer() as emu:
        client = UpstreamClient()
        client.start()
        try:
            body = BODY.replace(b'"gpt"', b'"gpt+hang"')
            with pytest.raises(UpstreamTimeout):
                await client.post(
                    emu.base_url + "/v1/chat/completions",
                    body,
                    HEADERS,
                    Timeouts(connect=1, first_byte=0.2, idle=1),
                    "emu",
                )
        finally:
            await client.close()


async def _server(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/x"


async def test_first_byte_and_idle_are_separate_limits() -> None:
    """Headers may take longer than the idle limit; after them, a silence longer than the idle
    limit fails the read, and a pooled connection keeps no timer from its previous answer."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        mode = request.query.get("mode")
        if mode == "slow-headers":
            await asyncio.sleep(0.4)
            return web.Response(body=b"late but fine")
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first")
        if mode == "silent-body":
            await asyncio.sleep(2)
        await response.write(b"second")
        return response

    runner, url = await _server(handler)
    client = UpstreamClient()
    client.start()
    timeouts = Timeouts(connect=1, first_byte=2, idle=0.2)
    try:
        response = await client.post(url + "?mode=slow-headers", BODY, HEADERS, timeouts, "t")
        assert await response.read() == b"late but fine"
        response.release()
        response = await client.post(url + "?mode=whole", BODY, HEADERS, timeouts, "t")
        assert b"".join([chunk async for chunk in response.iter_chunks()]) == b"firstsecond"
        response.release()
        # The same pooled connection, headers slower than the idle limit again.
        response = await client.post(url + "?mode=slow-headers", BODY, HEADERS, timeouts, "t")
        assert await response.read() == b"late but fine"
        response.release()
        response = await client.post(url + "?mode=silent-body", BODY, HEADERS, timeouts, "t")
        with pytest.raises(UpstreamTimeout, match="between two reads"):
            async for _ in response.iter_chunks():
                pass
        response.close()
    finally:
        await client.close()
        await runner.cleanup()
