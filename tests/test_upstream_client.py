"""The pooled upstream client: TCP_NODELAY, pooling, and error translation at its one boundary."""

from __future__ import annotations

import socket

import pytest

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
            session = client._session
            assert session is not None
            connector = session.connector
            assert connector is not None
            (pooled,) = [conn for conns in connector._conns.values() for conn in conns]  # type: ignore[attr-defined]
            sock = pooled[0].transport.get_extra_info("socket")
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
