"""Stream figures wrk cannot give: time to the first ``data:`` event, and many idle streams.

    python bench/streams.py idle-upstream --port P    # the silent upstream (used by gateway.py)

``ttft`` sends streaming POSTs over one kept-alive raw socket per concurrent client and times,
for each, from the request's last byte written to the arrival of the first ``data:`` line of the
body: what a user perceives as time to first token, less the model. ``idle_streams`` opens N
streams at once to a path whose upstream (``idle-upstream`` here) sends the response headers and
one chunk, then stays silent: each client reads to its first ``data:`` line and holds the
connection, so the gateway holds N open streams and N upstream connections while its memory is
read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import resource
import time
from collections.abc import Callable

_FIRST_CHUNK = (
    b'data: {"id":"chatcmpl-idle","object":"chat.completion.chunk","created":1763769600,'
    b'"model":"idle","choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"},'
    b'"logprobs":null,"finish_reason":null}]}\n\n'
)


def raise_fd_limit(wanted: int) -> int:
    """Raise this process's open-file limit (children inherit it) toward ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        # A gateway holding N streams needs 2N descriptors (client and upstream sides): above
        # the usual hard limit of 20 000 for 10 000 streams. Root may raise it.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))
            hard = wanted
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _request(host: str, port: int, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader, on_first_data: Callable[[], None]) -> None:
    """Read one whole response (content-length or chunked); call back at the first ``data:``."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {head[:200]!r}")
    lowered = head.lower()
    seen = False
    if b"transfer-encoding: chunked" in lowered:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            if not seen and b"data:" in data:
                seen = True
                on_first_data()
            if size == 0:
                return
    length = int(lowered.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0])
    while length > 0:
        data = await reader.read(min(length, 65536))
        if not data:
            raise RuntimeError("connection closed mid-body")
        length -= len(data)
        if not seen and b"data:" in data:
            seen = True
            on_first_data()


def _stamp(into: list[float]) -> None:
    into.append(time.perf_counter())


async def _ttft(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    requests: int,
    concurrency: int,
    warmup: int,
) -> list[float]:
    raw = _request(host, port, path, body, headers)
    samples: list[float] = []
    remaining = requests + warmup * concurrency

    async def client() -> None:
        nonlocal remaining
        reader, writer = await asyncio.open_connection(host, port)
        done = 0
        try:
            while remaining > 0:
                remaining -= 1
                first: list[float] = []
                writer.write(raw)
                sent = time.perf_counter()
                await _read_response(reader, functools.partial(_stamp, first))
                if done >= warmup and first:
                    samples.append(first[0] - sent)
                done += 1
        finally:
            writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    return samples


def ttft(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    requests: int = 2000,
    concurrency: int = 1,
    warmup: int = 50,
) -> list[float]:
    """Seconds from each request written to its first ``data:`` line, ``requests`` samples."""
    return asyncio.run(_ttft(host, port, path, body, headers, requests, concurrency, warmup))


# -- idle streams ---------------------------------------------------------------------------------


async def _idle_streams(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    count: int,
    time_limit: float,
    measure: Callable[[int], None],
) -> int:
    """Open up to ``count`` streams and hold them; ``measure(opened)`` once all are open."""
    raw = _request(host, port, path, body, headers)
    opened = 0
    writers: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(256)  # connections being opened at once (the listen backlog)
    all_open = asyncio.Event()
    deadline = time.monotonic() + time_limit

    failed = 0

    async def one() -> None:
        nonlocal opened, failed
        try:
            async with gate:
                reader, writer = await asyncio.open_connection(host, port)
                writers.append(writer)
                writer.write(raw)
                head = await reader.readuntil(b"\r\n\r\n")
                if b" 200 " not in head.split(b"\r\n", 1)[0] + b" ":
                    raise RuntimeError(f"{head[:200]!r}")
                while b"data:" not in await reader.readuntil(b"\n"):
                    pass
            opened += 1
        except Exception:
            failed += 1
            raise
        finally:
            if opened + failed == count:
                all_open.set()

    tasks = [asyncio.ensure_future(one()) for _ in range(count)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_open.wait(), max(1.0, deadline - time.monotonic()))
    measure(opened)
    failures: dict[str, int] = {}
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            name = repr(task.exception())[:120]
            failures[name] = failures.get(name, 0) + 1
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if failures:
        print(f"  streams that failed to open: {failures}", flush=True)
    for writer in writers:
        writer.close()
    return opened


def idle_streams(
    host: str,
    port: int,
    path: str,
    body: bytes,
    headers: dict[str, str],
    count: int,
    time_limit: float,
    measure: Callable[[int], None],
) -> int:
    """How many of ``count`` streams opened within ``time_limit``; ``measure`` runs while open."""
    raise_fd_limit(count * 2 + 1000)
    return asyncio.run(_idle_streams(host, port, path, body, headers, count, time_limit, measure))


# -- the silent upstream -------------------------------------------------------------------------


async def _serve_idle(port: int) -> None:
    """Answer every request with SSE headers and one chunk, then say nothing more."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.lower().split(b"\r\n"):
                if line.startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n"
                + f"{len(_FIRST_CHUNK):x}\r\n".encode()
                + _FIRST_CHUNK
                + b"\r\n"
            )
            await reader.read()  # until the gateway closes its side
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    raise_fd_limit(65536)
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    idle = sub.add_parser("idle-upstream", help="the upstream that sends one chunk, then nothing")
    idle.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    if args.command == "idle-upstream":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_serve_idle(args.port))


if __name__ == "__main__":
    main()
