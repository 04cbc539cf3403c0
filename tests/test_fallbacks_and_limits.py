"""Retries and fallbacks before the commit, non-cancellable providers, slow clients, idle
timeouts, and resources after many aborted streams."""

from __future__ import annotations

import asyncio
import random
import socket
import time
from typing import Any

import httpx
import orjson
import pytest

from llmrelay.testing.harness import RunningGateway, ThreadedEmulator

USER = [{"role": "user", "content": "hello"}]


def emu_provider(emulator: ThreadedEmulator, **extra: Any) -> dict[str, Any]:
    return {
        "type": "openai",
        "base_url": emulator.base_url + "/v1",
        "api_key": "sk-upstream",
        "timeouts": {"connect": 2, "first_byte": 5, "idle": 2},
        **extra,
    }


def post(gateway: RunningGateway, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json=body,
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def calls_to(emulator: ThreadedEmulator, since: int, model: str) -> int:
    return sum(1 for r in emulator.requests[since:] if r.json and r.json.get("model") == model)


@pytest.mark.parametrize("stream", [False, True])
def test_retryable_failure_falls_back_and_names_the_server(
    gateway_factory: Any, emulator: ThreadedEmulator, stream: bool
) -> None:
    gateway = gateway_factory(fallbacks={"emu/gpt+status=503": ["emu/gpt+chunks=3"]})
    key = gateway.create_key(name="user")
    before = len(emulator.requests)
    response = post(
        gateway, key, {"model": "emu/gpt+status=503", "messages": USER, "stream": stream}
    )
    assert response.status_code == 200
    assert response.headers["x-resolved-model"] == "emu/gpt+chunks=3"
    emulator.wait_for_requests(before + 3)
    assert calls_to(emulator, before, "gpt+status=503") == 2  # one jittered retry
    assert calls_to(emulator, before, "gpt+chunks=3") == 1
    if stream:
        events = [e for e in response.content.split(b"\n\n") if e.startswith(b"data: {")]
        chunks = [orjson.loads(e[6:]) for e in events]
        assert {c["model"] for c in chunks} == {"emu/gpt+chunks=3"}
        assert "error" not in chunks[-1]
    row = gateway.ledger_row(response.headers["x-request-id"])
    assert (row.status, row.requested_model, row.model) == (
        "ok",
        "emu/gpt+status=503",
        "emu/gpt+chunks=3",
    )


def test_error_first_stream_falls_back_cleanly(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory(fallbacks={"emu/gpt+error_first": ["emu/gpt+chunks=3"]})
    key = gateway.create_key(name="user")
    response = post(
        gateway, key, {"model": "emu/gpt+error_first", "messages": USER, "stream": True}
    )
    assert response.status_code == 200
    assert response.headers["x-resolved-model"] == "emu/gpt+chunks=3"
    assert b'"error"' not in response.content


def test_rate_limited_upstream_skips_the_retry_and_falls_back(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory(fallbacks={"emu/gpt+status=429+retry_after=7": ["emu/gpt"]})
    key = gateway.create_key(name="user")
    before = len(emulator.requests)
    response = post(gateway, key, {"model": "emu/gpt+status=429+retry_after=7", "messages": USER})
    assert response.status_code == 200
    assert calls_to(emulator, before, "gpt+status=429+retry_after=7") == 1


def test_deterministic_4xx_is_never_retried_nor_failed_over(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory(fallbacks={"emu/gpt+status=400": ["emu/gpt"]})
    key = gateway.create_key(name="user")
    before = len(emulator.requests)
    response = post(gateway, key, {"model": "emu/gpt+status=400", "messages": USER})
    assert response.status_code == 400
    time.sleep(0.2)
    assert calls_to(emulator, before, "gpt+status=400") == 1
    assert calls_to(emulator, before, "gpt") == 0


def test_all_attempts_failing_name_each_cause_and_keep_retry_after(
    gateway_factory: Any,
) -> None:
    gateway = gateway_factory(
        fallbacks={"emu/gpt+status=503": ["emu/gpt+status=429+retry_after=7"]}
    )
    key = gateway.create_key(name="user")
    response = post(gateway, key, {"model": "emu/gpt+status=503", "messages": USER})
    error = response.json()["error"]
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7"
    assert "emu/gpt+status=503" in error["message"]
    assert "emu/gpt+status=429+retry_after=7" in error["message"]


def test_nothing_is_retried_after_the_commit(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory(fallbacks={"emu/gpt+drop=3": ["emu/gpt"]})
    key = gateway.create_key(name="user")
    before = len(emulator.requests)
    response = post(gateway, key, {"model": "emu/gpt+drop=3", "messages": USER, "stream": True})
    assert b'"finish_reason":"error"' in response.content
    time.sleep(0.2)
    assert calls_to(emulator, before, "gpt+drop=3") == 1
    assert calls_to(emulator, before, "gpt") == 0


def test_idle_timeout_between_chunks_is_a_mid_stream_error(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    provider = emu_provider(emulator)
    provider["timeouts"] = {"connect": 2, "first_byte": 5, "idle": 0.3}
    gateway = gateway_factory(
        providers={"mock": {"type": "mock"}, "emu": provider},
        models=[{"id": "emu/slow", "provider": "emu", "upstream": "gpt+chunks=5+delay=1000"}],
        router={},
    )
    key = gateway.create_key(name="user")
    response = post(gateway, key, {"model": "emu/slow", "messages": USER, "stream": True})
    events = [e for e in response.content.split(b"\n\n") if e.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    last = orjson.loads(events[-2][6:])
    assert last["error"]["code"] == 504
    assert last["error"]["type"] == "upstream_timeout"


def test_provider_without_cancellation_is_drained_and_billed_whole(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory(
        providers={
            "mock": {"type": "mock"},
            "emu": emu_provider(emulator, supports_cancellation=False),
        },
        models=[
            {
                "id": "emu/long",
                "provider": "emu",
                "upstream": "gpt+chunks=60+delay=10",
                "price": {"input": 1.0, "output": 2.0},
            }
        ],
        router={},
    )
    key = gateway.create_key(name="user")
    before = len(emulator.requests)
    host, port = gateway.base_url.removeprefix("http://").split(":")
    payload = orjson.dumps({"model": "emu/long", "messages": USER, "stream": True})
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    head = sock.recv(65536)
    request_id = head.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    sock.close()
    (upstream,) = emulator.wait_for_requests(before + 1, timeout=10)[before:]
    assert upstream.completed
    assert not upstream.client_disconnected
    row = gateway.ledger_row(request_id)
    assert row.status == "cancelled"
    assert (row.completion_tokens, row.estimated) == (60, False)


def test_a_client_that_stops_reading_is_cut_off_without_stalling_others(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory(
        client_write_timeout_seconds=1.0,
        models=[
            {"id": "emu/huge", "provider": "emu", "upstream": "gpt+chunks=20000"},
            {"id": "mock/echo", "provider": "mock"},
        ],
        router={},
    )
    key = gateway.create_key(name="user")
    host, port = gateway.base_url.removeprefix("http://").split(":")
    payload = orjson.dumps({"model": "emu/huge", "messages": USER, "stream": True})
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    # Never read. Meanwhile another client is served normally.
    started = time.monotonic()
    other = post(gateway, key, {"model": "mock/echo", "messages": USER})
    assert other.status_code == 200
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 10
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = [r for r in gateway.ledger_rows() if r.model == "emu/huge"]
        if rows:
            break
        time.sleep(0.1)
    assert [r.status for r in rows] == ["cancelled"]
    sock.close()


def test_a_client_that_never_sends_its_body_gets_408(gateway_factory: Any) -> None:
    gateway = gateway_factory(client_body_timeout_seconds=0.5)
    key = gateway.create_key(name="user")
    host, port = gateway.base_url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: 100\r\n\r\n".encode()
    )
    sock.settimeout(5)
    answer = b""
    while b"request_timeout" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 408")
    assert b'"request_timeout"' in answer


def test_many_aborted_streams_leave_no_sockets_or_tasks(
    gateway_factory: Any, emulator: ThreadedEmulator
) -> None:
    gateway = gateway_factory()
    key = gateway.create_key(name="user")

    async def census() -> tuple[int, int]:
        pool = gateway.app.client.pool
        busy = pool.open_connections - len(pool.idle_connections())
        return len(asyncio.all_tasks()), busy

    def settle(expected: tuple[int, int]) -> tuple[int, int]:
        deadline = time.monotonic() + 10
        now = gateway.call(census())
        while now != expected and time.monotonic() < deadline:
            time.sleep(0.1)
            now = gateway.call(census())
        return now

    # Warm up, then take the baseline.
    post(gateway, key, {"model": "emu/gpt", "messages": USER, "stream": True})
    baseline = settle(gateway.call(census()))
    host, port = gateway.base_url.removeprefix("http://").split(":")
    payload = orjson.dumps(
        {"model": "emu/gpt+chunks=400+delay=5", "messages": USER, "stream": True}
    )
    request = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {key}\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    rng = random.Random(7)

    async def abort_one() -> None:
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(request)
        await asyncio.sleep(rng.uniform(0, 0.08))
        writer.transport.abort()

    async def abort_all() -> None:
        for start in range(0, 500, 50):
            await asyncio.gather(*(abort_one() for _ in range(start, start + 50)))

    asyncio.run(abort_all())
    assert settle(baseline) == baseline
    assert post(gateway, key, {"model": "emu/gpt", "messages": USER}).status_code == 200
