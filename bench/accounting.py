"""What accounting costs per request: accounting off, against SQLite, against PostgreSQL + Redis.

    .venv/bin/python bench/accounting.py [--requests N] [--concurrency 1,32] [--rounds 3]

One run starts ``llmrelay serve`` three ways, with the built-in ``mock/echo`` model as the upstream
(in-process, so the figures are the gateway's own):

- ``off``: ``accounting.enabled: false`` (keys are still checked; no limits, no credits, no
  ledger rows): the baseline;
- ``sqlite``: the default, SQLite ledger and in-process limits;
- ``postgres+redis``: PostgreSQL (127.0.0.1:5432, a temporary database) and Redis
  (127.0.0.1:6379, a key prefix of its own), as a multi-instance deployment runs.

The key used has credits, ``rpm``, ``tpm`` and a daily quota (all far from reached), so every check
runs: rate windows and the quota, the credit reservation, the settlement, the ledger row. For each
way and each concurrency it sends ``--requests`` chat completions (after a warm-up) and measures
requests/s, latency percentiles and the gateway's CPU time per request (``/proc/PID/stat``, all
threads: the ledger writer's batches included). Rounds alternate the three ways, and the median of
the rounds is reported, with the difference to ``off``: the per-request cost of accounting. The
figures are printed and written as JSON to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import redis
import yaml

RESULTS = Path(__file__).resolve().parent / "results"
LLMRELAY = str(Path(sys.executable).with_name("llmrelay"))
ADMIN_KEY = "lr-bench-accounting-admin-0123456789abcdefghijklmnopq"
PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
REDIS_URL = "redis://127.0.0.1:6379/0"
BODY = {"model": "mock/echo", "messages": [{"role": "user", "content": "hello there, gateway"}]}
WAYS = ("off", "sqlite", "postgres+redis")
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Measure:
    way: str
    concurrency: int
    requests: int
    seconds: float
    cpu_seconds: float
    system_seconds: float
    latencies_ms: list[float] = field(repr=False)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_us_per_request(self) -> float:
        return self.cpu_seconds / self.requests * 1e6

    @property
    def system_us_per_request(self) -> float:
        """The kernel's share (sockets: on loopback the peer's receive path is charged here)."""
        return self.system_seconds / self.requests * 1e6

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the process, every thread."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


class Gateway:
    def __init__(self, way: str, directory: Path, database: str, prefix: str) -> None:
        self.way = way
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "database_url": database,
            "providers": {"mock": {"type": "mock"}},
            "models": [
                {"id": "mock/echo", "provider": "mock", "price": {"input": 1.0, "output": 2.0}}
            ],
            "router": {"baskets": {"chat": "mock/echo"}, "default_basket": "chat"},
            "ledger": {"journal_path": str(directory / f"{way}.journal")},
            "accounting": {"enabled": way != "off", "redis_key_prefix": prefix},
        }
        if way == "postgres+redis":
            config["redis_url"] = REDIS_URL
        self.config = directory / f"{way}.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = directory / f"{way}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "LLMRELAY_ADMIN_KEY": ADMIN_KEY}
        for name in ("LLMRELAY_CONFIG", "LLMRELAY_DATABASE_URL", "LLMRELAY_REDIS_URL"):
            env.pop(name, None)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [LLMRELAY, "serve", "--config", str(self.config), "--port", str(self.port),
                 "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.config.parent,
            )  # fmt: skip

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def wait_ready(session: aiohttp.ClientSession, gateway: Gateway) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            async with session.get(gateway.base_url + "/health") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{gateway.way} did not start; see {gateway.log}")
        await asyncio.sleep(0.05)


async def create_key(session: aiohttp.ClientSession, gateway: Gateway) -> str:
    body = {
        "name": "bench",
        "credits": 1_000_000,
        "rpm": 2_000_000_000,
        "tpm": 2_000_000_000,
        "daily_tokens": 1_000_000_000_000_000,
    }
    async with session.post(
        gateway.base_url + "/admin/keys",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as response:
        if response.status != 201:
            raise RuntimeError(await response.text())
        secret: str = (await response.json())["key"]
        return secret


async def drive(
    session: aiohttp.ClientSession, url: str, secret: str, requests: int, concurrency: int
) -> tuple[float, list[float]]:
    """``requests`` POSTs from ``concurrency`` workers; wall seconds and each latency (ms)."""
    headers = {"Authorization": f"Bearer {secret}"}
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            async with session.post(url, json=BODY, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - started, latencies


async def measure(
    session: aiohttp.ClientSession, gateway: Gateway, secret: str, requests: int, concurrency: int
) -> Measure:
    url = gateway.base_url + "/v1/chat/completions"
    await drive(session, url, secret, max(100, requests // 10), concurrency)  # warm-up
    await asyncio.sleep(0.5)  # let the ledger write the warm-up's rows
    user_before, system_before = cpu_seconds(gateway.pid)
    seconds, latencies = await drive(session, url, secret, requests, concurrency)
    await asyncio.sleep(0.5)  # and this run's: their cost is part of the requests'
    user, system = cpu_seconds(gateway.pid)
    cpu = user + system - user_before - system_before
    return Measure(
        gateway.way, concurrency, requests, seconds, cpu, system - system_before, latencies
    )


async def run(args: argparse.Namespace, directory: Path) -> list[Measure]:
    database = "llmrelay_bench_" + uuid.uuid4().hex[:10]
    prefix = f"llmrelay-bench-{uuid.uuid4().hex[:10]}:"
    admin = await asyncpg.connect(database="postgres", **PG)
    await admin.execute(f'CREATE DATABASE "{database}"')
    urls = {
        "off": f"sqlite:///{directory / 'off.db'}",
        "sqlite": f"sqlite:///{directory / 'sqlite.db'}",
        "postgres+redis": f"postgresql://{PG['user']}@{PG['host']}:{PG['port']}/{database}",
    }
    gateways = {way: Gateway(way, directory, urls[way], prefix) for way in WAYS}
    measures: list[Measure] = []
    connector = aiohttp.TCPConnector(limit=0)
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            secrets = {}
            for gateway in gateways.values():
                gateway.start()
            for way, gateway in gateways.items():
                await wait_ready(session, gateway)
                secrets[way] = await create_key(session, gateway)
            for round_number in range(args.rounds):
                for concurrency in args.concurrency:
                    for way in WAYS if round_number % 2 == 0 else reversed(WAYS):
                        result = await measure(
                            session, gateways[way], secrets[way], args.requests, concurrency
                        )
                        measures.append(result)
                        print(
                            f"round {round_number + 1} {way:>15} c={concurrency:<3} "
                            f"{result.rps:8.0f} req/s  p50 {result.percentile(0.5):6.2f} ms  "
                            f"CPU {result.cpu_us_per_request:6.0f} µs/request",
                            flush=True,
                        )
    finally:
        for gateway in gateways.values():
            gateway.stop()
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
        client = redis.Redis.from_url(REDIS_URL)
        names = list(client.scan_iter(match=prefix + "*", count=1000))
        if names:
            client.delete(*names)
        client.close()
    return measures


def summarise(measures: list[Measure], concurrency: list[int]) -> list[dict[str, Any]]:
    rows = []
    for level in concurrency:
        base: dict[str, float] = {}
        for way in WAYS:
            runs = [m for m in measures if m.way == way and m.concurrency == level]
            row = {
                "way": way,
                "concurrency": level,
                "rps": statistics.median(m.rps for m in runs),
                "p50_ms": statistics.median(m.percentile(0.5) for m in runs),
                "p99_ms": statistics.median(m.percentile(0.99) for m in runs),
                "cpu_us_per_request": statistics.median(m.cpu_us_per_request for m in runs),
                "system_us_per_request": statistics.median(m.system_us_per_request for m in runs),
            }
            if way == "off":
                base = row
            row["added_cpu_us_per_request"] = row["cpu_us_per_request"] - base["cpu_us_per_request"]
            row["added_p50_ms"] = row["p50_ms"] - base["p50_ms"]
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per way, concurrency, round")
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1, 32],
        help="comma-separated, default 1,32",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="500 requests, one round")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 500, 1
    with tempfile.TemporaryDirectory(prefix="llmrelay-bench-") as directory:
        measures = asyncio.run(run(args, Path(directory)))
    summary = summarise(measures, args.concurrency)
    print()
    print(f"{'way':>15} {'c':>3} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'CPU µs/req':>10} {'(kernel)':>8} {'+CPU µs':>8} {'+p50 ms':>8}")  # fmt: skip
    for row in summary:
        print(
            f"{row['way']:>15} {row['concurrency']:>3} {row['rps']:8.0f} {row['p50_ms']:7.2f} "
            f"{row['p99_ms']:7.2f} {row['cpu_us_per_request']:10.0f} "
            f"{row['system_us_per_request']:8.0f} "
            f"{row['added_cpu_us_per_request']:8.0f} {row['added_p50_ms']:8.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"accounting-{stamp}.json"
    path.write_text(
        json.dumps(
            {
                "generated": stamp,
                "machine": {
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                    "cpus": os.cpu_count(),
                },
                "arguments": vars(args),
                "summary": summary,
                "runs": [
                    {k: v for k, v in asdict(m).items() if k != "latencies_ms"} for m in measures
                ],
            },
            indent=2,
        )
    )
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
