"""Which HTTP client the gateway should call upstreams with: aiohttp or httpx, measured.

    .venv/bin/python bench/upstream_client.py [--quick] [--rounds R]

The gateway's upstream traffic is small JSON POSTs and SSE reads over kept-alive loopback (or LAN)
connections, many at once. Against the near-free nginx upstream of ``fixed_upstream.py`` (pinned to
``--server-cpus``), each client runs in its own process on uvloop, pinned to one core
(``--client-cpus``), and does: ``N`` sequential POSTs reading the JSON body; ``M`` concurrent
POSTs (``M`` tasks, each sending its share of ``K`` requests one after another); ``N`` sequential
and ``M``-concurrent stream reads of the 50-chunk SSE body. It reports requests/s and the process's
CPU time per request (``time.process_time``), the median over ``--rounds`` rounds with the clients'
order alternating, and each client's ratio to aiohttp.

Clients: ``aiohttp`` (ClientSession + TCPConnector configured as in ``providers/http.py``),
``httpx`` (AsyncClient with a pool of the same size), ``httpx2`` when installed (the fork the
official SDKs use), and ``llmrelay`` (the gateway's own ``UpstreamClient``: aiohttp plus the
first-byte and idle timeouts around every read).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import orjson

from fixed_upstream import (
    Upstream,
    busy_seconds,
    machine_info,
    request_body,
    running,
    start_upstream,
)

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = ("sequential", "concurrent", "stream_sequential", "stream_concurrent")
HEADERS = {
    "content-type": "application/json",
    "accept": "application/json",
    "authorization": "Bearer sk-bench-upstream",
}
STREAM_HEADERS = {**HEADERS, "accept": "text/event-stream"}


class Client(Protocol):
    async def post_json(self, url: str, body: bytes) -> int:
        """POST, read the whole body; the number of bytes read."""

    async def post_stream(self, url: str, body: bytes) -> int:
        """POST, read the body as it arrives until its end; the number of bytes read."""

    async def close(self) -> None: ...


class AiohttpClient:
    def __init__(self) -> None:
        import aiohttp

        self._aiohttp = aiohttp
        connector = aiohttp.TCPConnector(
            limit=1024, limit_per_host=256, keepalive_timeout=30.0, ttl_dns_cache=300
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None),
            skip_auto_headers=("User-Agent",),
            auto_decompress=True,
            raise_for_status=False,
        )
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=10.0)

    async def post_json(self, url: str, body: bytes) -> int:
        async with self._session.post(
            url, data=body, headers=HEADERS, timeout=self._timeout, allow_redirects=False
        ) as response:
            assert response.status == 200, response.status
            return len(await response.read())

    async def post_stream(self, url: str, body: bytes) -> int:
        size = 0
        async with self._session.post(
            url, data=body, headers=STREAM_HEADERS, timeout=self._timeout, allow_redirects=False
        ) as response:
            assert response.status == 200, response.status
            content = response.content
            while chunk := await content.readany():
                size += len(chunk)
        return size

    async def close(self) -> None:
        await self._session.close()


class HttpxClient:
    def __init__(self, module: str = "httpx") -> None:
        httpx: Any = importlib.import_module(module)
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=1024, max_keepalive_connections=256, keepalive_expiry=30.0
            ),
            timeout=httpx.Timeout(connect=10.0, read=300.0, write=300.0, pool=300.0),
            follow_redirects=False,
        )

    async def post_json(self, url: str, body: bytes) -> int:
        response = await self._client.post(url, content=body, headers=HEADERS)
        assert response.status_code == 200, response.status_code
        return len(response.content)

    async def post_stream(self, url: str, body: bytes) -> int:
        size = 0
        async with self._client.stream("POST", url, content=body, headers=STREAM_HEADERS) as r:
            assert r.status_code == 200, r.status_code
            async for chunk in r.aiter_raw():
                size += len(chunk)
        return size

    async def close(self) -> None:
        await self._client.aclose()


class LlmrelayClient:
    """The gateway's own client, used exactly as ``providers/openai.py`` uses it."""

    def __init__(self) -> None:
        from llmrelay.config import Timeouts
        from llmrelay.providers.http import UpstreamClient

        self._client = UpstreamClient()
        self._client.start()
        self._timeouts = Timeouts(connect=10, first_byte=300, idle=120)

    async def post_json(self, url: str, body: bytes) -> int:
        response = await self._client.post(url, body, HEADERS, self._timeouts, "bench")
        try:
            assert response.status == 200, response.status
            return len(await response.read())
        finally:
            response.release()

    async def post_stream(self, url: str, body: bytes) -> int:
        size = 0
        response = await self._client.post(url, body, STREAM_HEADERS, self._timeouts, "bench")
        try:
            assert response.status == 200, response.status
            async for chunk in response.iter_chunks():
                size += len(chunk)
        finally:
            response.close()
        return size

    async def close(self) -> None:
        await self._client.close()


def make_client(name: str) -> Client:
    if name == "aiohttp":
        return AiohttpClient()
    if name in ("httpx", "httpx2"):
        return HttpxClient(name)
    if name == "llmrelay":
        return LlmrelayClient()
    raise ValueError(name)


def available_clients() -> list[str]:
    names = ["aiohttp", "httpx"]
    if importlib.util.find_spec("httpx2") is not None:
        names.append("httpx2")
    names.append("llmrelay")
    return names


# -- one client, in its own pinned process -------------------------------------------------------


async def _timed(count: int, work: Callable[[], Awaitable[None]]) -> dict[str, float]:
    cores = os.sched_getaffinity(0)
    busy = busy_seconds(cores)
    cpu, wall = time.process_time(), time.perf_counter()
    await work()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    # The share of this process's cores that other processes took meanwhile (shared machines).
    other = max(0.0, busy_seconds(cores) - busy - cpu) / (wall * len(cores))
    return {"requests": count, "seconds": wall, "cpu_seconds": cpu, "other_load": other}


async def run_client(
    name: str, json_url: str, sse_url: str, model: str, n: int, m: int, k: int
) -> Any:
    client = make_client(name)
    json_body = request_body(model, stream=False)
    sse_body = request_body(model, stream=True)
    try:

        async def sequential(
            post: Callable[[str, bytes], Awaitable[int]], url: str, body: bytes, count: int
        ) -> None:
            for _ in range(count):
                await post(url, body)

        async def concurrent(
            post: Callable[[str, bytes], Awaitable[int]], url: str, body: bytes
        ) -> None:
            await asyncio.gather(*(sequential(post, url, body, k // m) for _ in range(m)))

        # Warm-up: open the pool's connections, fill caches, let the allocator settle.
        await concurrent(client.post_json, json_url, json_body)
        await concurrent(client.post_stream, sse_url, sse_body)
        return {
            "sequential": await _timed(
                n, lambda: sequential(client.post_json, json_url, json_body, n)
            ),
            "concurrent": await _timed(
                k // m * m, lambda: concurrent(client.post_json, json_url, json_body)
            ),
            "stream_sequential": await _timed(
                n, lambda: sequential(client.post_stream, sse_url, sse_body, n)
            ),
            "stream_concurrent": await _timed(
                k // m * m, lambda: concurrent(client.post_stream, sse_url, sse_body)
            ),
        }
    finally:
        await client.close()


def child_main(args: argparse.Namespace) -> None:
    if args.client_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.client_cpus.split(",")})
    import uvloop

    result = uvloop.run(
        run_client(args.child, args.json_url, args.sse_url, args.model, args.n, args.m, args.k)
    )
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


# -- the parent: upstream, rounds, report ----------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller counts, 1 round")
    parser.add_argument("--rounds", type=int, default=None, help="(3)")
    parser.add_argument("-n", type=int, default=None, help="sequential requests (3000)")
    parser.add_argument("-m", type=int, default=64, help="requests in flight")
    parser.add_argument(
        "-k", type=int, default=None, help="requests in the concurrent runs (10000)"
    )
    parser.add_argument("--clients", default=None, help="comma-separated subset")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--upstream", choices=("auto", "nginx", "emulator"), default="auto")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sse-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _child(args: argparse.Namespace, name: str, upstream: Upstream) -> Any:
    command = [
        sys.executable,
        __file__,
        "--child",
        name,
        "--json-url",
        upstream.json_url,
        "--sse-url",
        upstream.sse_url,
        "--model",
        upstream.sse_model,
        "-n",
        str(args.n),
        "-m",
        str(args.m),
        "-k",
        str(args.k),
        "--client-cpus",
        args.client_cpus or "",
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"client {name} failed:\n{out.stderr}")
    return orjson.loads(out.stdout.strip().splitlines()[-1])


def _median(runs: list[dict[str, float]]) -> dict[str, Any]:
    rps = [r["requests"] / r["seconds"] for r in runs]
    cpu = [r["cpu_seconds"] / r["requests"] * 1e6 for r in runs]
    return {
        "rps": round(statistics.median(rps), 1),
        "cpu_us_per_request": round(statistics.median(cpu), 1),
        "rps_runs": [round(x, 1) for x in rps],
        "cpu_us_runs": [round(x, 1) for x in cpu],
        "max_other_load": round(max(r.get("other_load", 0.0) for r in runs), 3),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return
    quick = {"n": 1000, "k": 4000, "rounds": 1}
    full = {"n": 3000, "k": 10000, "rounds": 3}
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.server_cpus:
        os.sched_setaffinity(0, {int(c) for c in args.server_cpus.split(",")})
    clients = args.clients.split(",") if args.clients else available_clients()
    started = datetime.now(UTC)
    machine = machine_info()
    runs: dict[str, dict[str, list[dict[str, float]]]] = {
        c: {s: [] for s in SCENARIOS} for c in clients
    }
    with tempfile.TemporaryDirectory(prefix="llmrelay-bench-") as tmp:
        upstream = start_upstream(Path(tmp), args.upstream, args.server_cpus or None)
        with running(upstream):
            for round_ in range(args.rounds):
                order = clients if round_ % 2 == 0 else clients[::-1]
                for name in order:
                    result = _child(args, name, upstream)
                    for scenario in SCENARIOS:
                        runs[name][scenario].append(result[scenario])
                    print(
                        f"  round {round_ + 1}: {name:<8} "
                        + "  ".join(
                            f"{s} {result[s]['requests'] / result[s]['seconds']:.0f}/s"
                            for s in SCENARIOS
                        ),
                        flush=True,
                    )
    figures = {c: {s: _median(runs[c][s]) for s in SCENARIOS} for c in clients}
    print(
        f"\nupstream: {upstream.kind} ({upstream.version}); client pinned to cpu "
        f"{args.client_cpus}, uvloop; median of {args.rounds} round(s)"
    )
    header = (
        f"{'client':<9} {'scenario':<18} {'req/s':>8} {'CPU µs/req':>11} "
        f"{'req/s vs aiohttp':>17} {'CPU vs aiohttp':>15} {'other load':>11}"
    )
    print(header)
    print("-" * len(header))
    base = figures.get("aiohttp")
    for scenario in SCENARIOS:
        for name in clients:
            f = figures[name][scenario]
            rps_ratio = f["rps"] / base[scenario]["rps"] if base else 0.0
            cpu_ratio = (
                f["cpu_us_per_request"] / base[scenario]["cpu_us_per_request"] if base else 0.0
            )
            print(
                f"{name:<9} {scenario:<18} {f['rps']:>8.0f} {f['cpu_us_per_request']:>11.1f} "
                f"{rps_ratio:>17.2f} {cpu_ratio:>15.2f} {f['max_other_load']:>11.0%}"
            )
    report = {
        "bench": "upstream_client",
        "date": started.isoformat(timespec="seconds"),
        "machine": {**machine, "loadavg_end": os.getloadavg()},
        "settings": {
            "n": args.n,
            "m": args.m,
            "k": args.k,
            "rounds": args.rounds,
            "client_cpus": args.client_cpus,
            "server_cpus": args.server_cpus,
            "upstream": upstream.kind,
            "upstream_version": upstream.version,
            "loop": "uvloop",
        },
        "figures": figures,
    }
    output = args.output or RESULTS / f"upstream-client-{started:%Y%m%d-%H%M%S}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(f"figures written to {output}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
