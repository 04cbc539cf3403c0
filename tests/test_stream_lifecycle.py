"""Keep-alive, the commit rule and client cancellation, observed from both ends."""

from __future__ import annotations

import socket
import time
from typing import Any

import httpx
import openai
import orjson
import pytest

from llmrelay.testing.harness import RunningGateway, ThreadedEmulator

USER = [{"role": "user", "content": "hello"}]


def raw_request(gateway: RunningGateway, key: str, body: dict[str, Any]) -> socket.socket:
    payload = orjson.dumps(body)
    host, port = gateway.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_keepalive_comments_precede_a_slow_first_token(gateway: RunningGateway) -> None:
    key = gateway.create_key(name="user")
    started = time.monotonic()
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "emu/gpt+first=3000", "messages": USER, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200
    assert time.monotonic() - started >= 2.9
    events = response.content.split(b"\n\n")
    comments = [e for e in events if e == b": PROCESSING"]
    assert len(comments) >= 2  # keepalive_seconds is 1 in the test config
    assert events.index(comments[0]) == 0
    # And the official SDK ignores them.
    with openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=key, max_retries=0) as client:
        stream = client.chat.completions.create(
            model="emu/gpt+first=3000",
            messages=USER,
            stream=True,  # type: ignore[arg-type]
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.startswith("Echo: hello")


def test_keepalive_between_slow_chunks(gateway_factory: Any) -> None:
    gateway = gateway_factory(keepalive_seconds=0.05)
    key = gateway.create_key(name="user")
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "emu/gpt+chunks=40+delay=20", "messages": USER, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    events = response.content.split(b"\n\n")
    assert b": PROCESSING" not in events  # 20 ms gaps never reach the 50 ms keep-alive
    assert events[-2] == b"data: [DONE]"


def test_client_disconnect_mid_stream_cancels_upstream_and_bills_what_was_streamed(
    gateway: RunningGateway, emulator: ThreadedEmulator
) -> None:
    key = gateway.create_key(name="user")
    before = len(emulator.requests)
    sock = raw_request(
        gateway, key, {"model": "emu/gpt+chunks=400+delay=10", "messages": USER, "stream": True}
    )
    head = read_until(sock, b"Echo:")
    request_id = head.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    time.sleep(0.3)
    closed_at = time.monotonic()
    sock.close()
    (upstream,) = emulator.wait_for_requests(before + 1, timeout=5)[before:]
    assert upstream.client_disconnected
    assert upstream.disconnected_at is not None
    assert upstream.disconnected_at - closed_at < 0.1  # the contract: within 100 ms
    assert upstream.chunks_written < 400
    row = gateway.ledger_row(request_id)
    assert row.status == "cancelled"
    assert row.prompt_tokens > 0
    # Usage never came (the stream was cut), so the gateway counted what it relayed.
    assert row.estimated is True
    # An estimate (about 4 bytes per token), so within a factor of two of what was sent.
    assert upstream.chunks_written / 2 <= row.completion_tokens <= upstream.chunks_written * 2


def test_client_disconnect_while_waiting_non_stream(
    gateway: RunningGateway, emulator: ThreadedEmulator
) -> None:
    key = gateway.create_key(name="user")
    before = len(emulator.requests)
    sock = raw_request(gateway, key, {"model": "emu/gpt+first=3000", "messages": USER})
    deadline = time.monotonic() + 5
    while len(emulator.requests) <= before and time.monotonic() < deadline:
        time.sleep(0.01)
    sock.close()
    (upstream,) = emulator.wait_for_requests(before + 1, timeout=5)[before:]
    assert upstream.client_disconnected
    assert not upstream.completed
    rows = [r for r in gateway.ledger_rows() if r.model == "emu/gpt+first=3000"]
    assert [r.status for r in rows] == ["cancelled"]


@pytest.mark.parametrize("cut_after", [0.0, 0.05, 0.2])
def test_repeated_aborts_leave_the_gateway_healthy(
    gateway: RunningGateway, cut_after: float
) -> None:
    key = gateway.create_key(name="user")
    for _ in range(10):
        sock = raw_request(
            gateway, key, {"model": "emu/gpt+chunks=400+delay=10", "messages": USER, "stream": True}
        )
        time.sleep(cut_after)
        sock.close()
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "emu/gpt", "messages": USER},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        rows = gateway.ledger_rows()
        if len(rows) >= 11:
            break
        time.sleep(0.05)
    # A connection cut before its request was even parsed never reached the app: no row is owed.
    assert len(rows) == 11 if cut_after else 1 <= len(rows) <= 11
    assert sorted({r.status for r in rows}) in (["cancelled", "ok"], ["ok"])
    assert sum(r.status == "ok" for r in rows) == 1


def test_a_failure_after_a_keepalive_commit_is_the_streams_and_never_falls_back(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory(
        keepalive_seconds=0.2,
        models=[
            {"id": "emu/slow-failure", "provider": "emu", "upstream": "gpt+first=800+status=503"},
            {"id": "emu/gpt", "provider": "emu"},
        ],
        router={},
        fallbacks={"emu/slow-failure": ["emu/gpt"]},
    )
    key = gateway.create_key(name="user")
    before = len(emulator.requests)
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "emu/slow-failure", "messages": USER, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    # Committed by the keep-alive while the first chunk was awaited: the 503 that came after is
    # written into the stream, and neither retried nor failed over.
    assert response.status_code == 200
    events = response.content.split(b"\n\n")
    assert events[0] == b": PROCESSING"
    data = [e for e in events if e.startswith(b"data: {")]
    assert len(data) == 1
    error = orjson.loads(data[0][6:])
    assert error["choices"][0]["finish_reason"] == "error"
    assert error["error"]["code"] == 503
    assert events[-2] == b"data: [DONE]"
    time.sleep(0.2)
    models = [r.json.get("model") for r in emulator.requests[before:] if r.json]
    assert models == ["gpt+first=800+status=503"]
    row = gateway.ledger_row(response.headers["x-request-id"])
    assert (row.status, row.http_status) == ("error", 503)


def test_a_quick_failure_before_any_keepalive_falls_back(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory(keepalive_seconds=0.5, fallbacks={"emu/gpt+status=503": ["emu/gpt"]})
    key = gateway.create_key(name="user")
    response = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json={"model": "emu/gpt+status=503", "messages": USER, "stream": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    assert response.status_code == 200
    assert response.headers["x-resolved-model"] == "emu/gpt"
    assert b": PROCESSING" not in response.content
    assert response.content.endswith(b"data: [DONE]\n\n")
