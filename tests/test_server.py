"""The gateway's own HTTP/1.1 server (``llmrelay.server``), spoken to over raw sockets.

Every other test serves the real application through it too (the harness); these pin the HTTP
details a client library would not exercise: pipelining, chunked bodies both ways, 100-continue,
HEAD, HTTP/1.0, malformed and oversized heads, back-pressure, idle and graceful closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from llmrelay.server import Server
from llmrelay.server.protocol import MAX_HEAD_BYTES
from llmrelay.testing.harness import free_port

Scope = dict[str, Any]


class EchoApp:
    """Answers what it was asked: method, path, query and body, as JSON; a few paths differ."""

    def __init__(self) -> None:
        self.disconnects = 0
        self.send_returned = asyncio.Event()
        self.release = asyncio.Event()
        self.disconnected = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        path = scope["path"]
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if path == "/fail":
            raise RuntimeError("boom")
        if path == "/stream":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for part in (b"one", b"two", b""):
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b"three", "more_body": False})
            return
        if path == "/flood":
            # 64 MiB to a client that may not read: send() must wait for it (back-pressure).
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(1024):
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})
            self.send_returned.set()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if path == "/hold":
            # A stream that waits for the client to leave, as the gateway's disconnect watcher.
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"started", "more_body": True})
            message = await receive()
            if message["type"] == "http.disconnect":
                self.disconnects += 1
                self.disconnected.set()
            return
        if path == "/slow":
            await self.release.wait()
        payload = orjson.dumps(
            {
                "method": scope["method"],
                "path": path,
                "raw_path": scope["raw_path"].decode(),
                "query": scope["query_string"].decode(),
                "body": body.decode(),
                "http_version": scope["http_version"],
                "client": scope["client"][0],
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


@pytest.fixture
async def served() -> AsyncIterator[tuple[Server, EchoApp]]:
    app = EchoApp()
    server = Server(app, host="127.0.0.1", port=0, keep_alive_seconds=0.3, graceful_seconds=5)
    await server.start()
    try:
        yield server, app
    finally:
        await server.shutdown()


async def connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", server.port)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names) and the body, by its framing."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines[1:] if line)
    }
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            chunk = await reader.readexactly(size + 2)
            if size == 0:
                break
            body += chunk[:-2]
    else:
        body = await asyncio.wait_for(reader.read(), 5)
    return status, headers, body


def post(path: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode()
        + body
    )


async def test_keep_alive_and_pipelining_answer_in_order(served: tuple[Server, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(post("/a", b"first") + post("/b?x=1", b"second") + b"GET /c HTTP/1.1\r\n\r\n")
    answers = [await read_response(reader) for _ in range(3)]
    assert [orjson.loads(body)["path"] for _, _, body in answers] == ["/a", "/b", "/c"]
    assert orjson.loads(answers[1][2])["query"] == "x=1"
    assert [orjson.loads(body)["body"] for _, _, body in answers] == ["first", "second", ""]
    status, headers, _ = answers[0]
    assert status == 200
    assert "date" in headers
    assert "connection" not in headers
    writer.write(post("/d", b"again"))  # the same connection still serves
    assert orjson.loads((await read_response(reader))[2])["path"] == "/d"
    writer.close()


async def test_percent_encoded_path_is_decoded_and_raw_path_kept(
    served: tuple[Server, EchoApp],
) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(b"GET /v1beta/models/a%2Fb%3Ax?key=k%20v HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = orjson.loads((await read_response(reader))[2])
    assert answer["path"] == "/v1beta/models/a/b:x"
    assert answer["raw_path"] == "/v1beta/models/a%2Fb%3Ax"
    assert answer["query"] == "key=k%20v"
    writer.close()


async def test_chunked_request_body_is_reassembled(served: tuple[Server, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(
        b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\n\r\n"
    )
    assert orjson.loads((await read_response(reader))[2])["body"] == "hello world"
    writer.close()


async def test_expect_100_continue_is_answered_before_the_body(
    served: tuple[Server, EchoApp],
) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(
        b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nExpect: 100-continue\r\n\r\n"
    )
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    writer.write(b"body")
    status, _, body = await read_response(reader)
    assert status == 200
    assert orjson.loads(body)["body"] == "body"
    writer.close()


async def test_a_stream_is_chunked_for_http11_and_close_delimited_for_http10(
    served: tuple[Server, EchoApp],
) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
    status, headers, body = await read_response(reader)
    assert status == 200
    assert headers["transfer-encoding"] == "chunked"
    assert body == b"onetwothree"
    writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")  # still usable afterwards
    assert (await read_response(reader))[0] == 200
    writer.close()

    reader, writer = await connect(server)
    writer.write(b"GET /stream HTTP/1.0\r\n\r\n")
    _status, headers, body = await read_response(reader)
    assert "transfer-encoding" not in headers
    assert headers["connection"] == "close"
    assert body == b"onetwothree"
    writer.close()


async def test_http10_keep_alive_is_honoured(served: tuple[Server, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    for _ in range(2):
        writer.write(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = await read_response(reader)
        assert status == 200
        assert headers["connection"] == "keep-alive"
        assert orjson.loads(body)["http_version"] == "1.0"
    writer.write(b"GET /a HTTP/1.0\r\n\r\n")
    _status, headers, _ = await read_response(reader)
    assert headers["connection"] == "close"
    assert await asyncio.wait_for(reader.read(), 5) == b""  # and the server closed it
    writer.close()


async def test_head_gets_the_head_without_the_body(served: tuple[Server, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(b"HEAD /a HTTP/1.1\r\nHost: t\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: " in head
    # The next bytes are the second response, not the first one's body.
    _status, _, body = await read_response(reader)
    assert orjson.loads(body)["path"] == "/b"
    writer.close()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (MAX_HEAD_BYTES + 10) + b"\r\n\r\n", 431),
    ],
)
async def test_a_bad_head_gets_a_json_error_and_the_connection_closes(
    served: tuple[Server, EchoApp], raw: bytes, status: int
) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(raw)
    answer_status, headers, body = await read_response(reader)
    assert answer_status == status
    assert headers["connection"] == "close"
    error = orjson.loads(body)["error"]
    assert error["code"] == status
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()


async def test_an_application_failure_is_a_500_in_the_error_shape(
    served: tuple[Server, EchoApp], caplog: pytest.LogCaptureFixture
) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(post("/fail", b""))
    status, headers, body = await read_response(reader)
    assert status == 500
    assert headers["connection"] == "close"
    assert orjson.loads(body)["error"]["type"] == "server_error"
    assert any("boom" in str(r.exc_info) for r in caplog.records)
    writer.close()


async def test_an_upgrade_request_is_served_as_http11(served: tuple[Server, EchoApp]) -> None:
    server, _ = served
    reader, writer = await connect(server)
    writer.write(
        b"GET /a HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
        b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nGET /b HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    first = await read_response(reader)
    second = await read_response(reader)
    assert (first[0], orjson.loads(first[2])["path"]) == (200, "/a")
    assert orjson.loads(second[2])["path"] == "/b"
    writer.close()


async def test_the_application_learns_of_a_disconnect_through_receive(
    served: tuple[Server, EchoApp],
) -> None:
    server, app = served
    reader, writer = await connect(server)
    writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.wait_for(reader.readuntil(b"started"), 5)
    writer.close()
    async with asyncio.timeout(5):
        await app.disconnected.wait()
        while server.state.tasks:  # the request's task ends too
            await asyncio.wait(list(server.state.tasks))
    assert app.disconnects == 1


async def test_send_waits_for_a_client_that_does_not_read(served: tuple[Server, EchoApp]) -> None:
    server, app = served
    reader, writer = await connect(server)
    writer.write(b"GET /flood HTTP/1.1\r\nHost: t\r\n\r\n")
    await asyncio.sleep(0.5)
    assert not app.send_returned.is_set(), "64 MiB were buffered for a client that reads nothing"
    received = 0
    async with asyncio.timeout(30):
        while not app.send_returned.is_set():
            received += len(await reader.read(1 << 20))
    assert received > 32 << 20
    writer.close()


async def test_idle_keep_alive_connections_are_closed(served: tuple[Server, EchoApp]) -> None:
    server, _ = served  # keep_alive_seconds=0.3, swept once a second
    reader, writer = await connect(server)
    writer.write(b"GET /a HTTP/1.1\r\nHost: t\r\n\r\n")
    await read_response(reader)
    started = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert 0.25 < time.monotonic() - started < 2.5
    writer.close()


async def test_shutdown_lets_a_request_in_flight_finish_and_refuses_new_ones() -> None:
    app = EchoApp()
    server = Server(app, host="127.0.0.1", port=0, graceful_seconds=5)
    await server.start()
    reader, writer = await connect(server)
    writer.write(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
    idle_reader, idle_writer = await connect(server)
    await asyncio.sleep(0.1)
    stopping = asyncio.create_task(server.shutdown())
    await asyncio.sleep(0.2)
    assert not stopping.done()
    assert await asyncio.wait_for(idle_reader.read(), 5) == b""  # the idle one is closed at once
    with pytest.raises(ConnectionRefusedError):
        await connect(server)
    app.release.set()
    status, headers, _ = await read_response(reader)
    assert status == 200
    assert headers["connection"] == "close"
    await asyncio.wait_for(stopping, 5)
    writer.close()
    idle_writer.close()


def start_workers(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path, dict[str, str]]:
    port = free_port()
    env = {
        **os.environ,
        "LLMRELAY_ADMIN_KEY": "lr-admin-" + "w" * 40,
        "LLMRELAY_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
    }
    env.pop("LLMRELAY_CONFIG", None)
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("llmrelay")), "serve",
             "--port", str(port), "--workers", "2", "--log-level", "info"],
            stdout=output, stderr=subprocess.STDOUT, env=env, cwd=tmp_path,
        )  # fmt: skip
    return process, port, log, env


def workers_of(process: subprocess.Popen[bytes]) -> list[int]:
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
    return [int(pid) for pid in children.split()]


def wait_until_serving(process: subprocess.Popen[bytes], port: int, log: Path, count: int) -> None:
    """Until two workers run, ``count`` of them have said so, and /health answers."""
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text()
        with contextlib.suppress(httpx.TransportError):
            if (
                len(workers_of(process)) == 2
                and log.read_text().count("serving on") >= count
                and httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200
            ):
                return
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def test_serve_with_two_workers_answers_replaces_a_dead_worker_and_exits_cleanly(
    tmp_path: Path,
) -> None:
    process, port, log, env = start_workers(tmp_path)
    try:
        wait_until_serving(process, port, log, 2)
        first = workers_of(process)
        os.kill(first[0], signal.SIGKILL)
        wait_until_serving(process, port, log, 3)  # a third "serving on": the replacement
        assert first[0] not in workers_of(process)
        assert first[1] in workers_of(process)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            for _ in range(10):
                response = client.post(
                    "/v1/chat/completions",
                    headers={"Authorization": "Bearer " + env["LLMRELAY_ADMIN_KEY"]},
                    json={"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]},
                )
                assert response.status_code == 200, response.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()  # the workers die with it (PR_SET_PDEATHSIG)
            process.wait()


def test_workers_do_not_outlive_a_killed_supervisor(tmp_path: Path) -> None:
    process, port, log, _ = start_workers(tmp_path)
    try:
        wait_until_serving(process, port, log, 2)
        workers = workers_of(process)
    finally:
        process.kill()
        process.wait()
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in workers):
        # Still alive: a zombie (reaped by init soon) no longer serves; a live one must go.
        states = [
            Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
            for pid in workers
            if Path(f"/proc/{pid}").exists()
        ]
        if all(state == "Z" for state in states):
            break
        assert time.monotonic() < deadline, f"workers {workers} outlived their supervisor"
        time.sleep(0.1)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
