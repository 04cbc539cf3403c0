"""``llmrelay serve`` as real processes, for the tests that need several of them or a signal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import yaml

from services import free_port

ADMIN_KEY = "lr-scale-test-admin-key-0123456789abcdefghijklmnop"
LLMRELAY = str(Path(sys.executable).with_name("llmrelay"))


def gateway_config(directory: Path, name: str, **settings: Any) -> Path:
    """A config file with the mock provider (priced) and a journal of the instance's own."""
    config: dict[str, Any] = {
        "providers": {"mock": {"type": "mock"}},
        "models": [
            {"id": "mock/echo", "provider": "mock", "price": {"input": 1.0, "output": 2.0}},
            {"id": "mock/lorem", "provider": "mock", "price": {"input": 1.0, "output": 2.0}},
        ],
        "router": {"baskets": {"chat": "mock/echo"}, "default_basket": "chat"},
        **settings,
    }
    config["ledger"] = {
        "journal_path": str(directory / f"{name}.journal"),
        "flush_interval_seconds": 0.05,
        **settings.get("ledger", {}),
    }
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class GatewayProcess:
    """One ``llmrelay serve`` process on a free port, logging to a file next to its config."""

    def __init__(self, config: Path, port: int | None = None) -> None:
        self.config = config
        self.port = port or free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = config.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        env = {**os.environ, "LLMRELAY_ADMIN_KEY": ADMIN_KEY}
        for name in ("LLMRELAY_CONFIG", "LLMRELAY_DATABASE_URL", "LLMRELAY_REDIS_URL"):
            env.pop(name, None)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [LLMRELAY, "serve", "--config", str(self.config), "--port", str(self.port),
                 "--log-level", "warning"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.config.parent,
            )  # fmt: skip
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited at start:\n{self.output()}")
            try:
                if httpx.get(self.base_url + "/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"gateway not ready in {timeout} s:\n{self.output()}")
            time.sleep(0.05)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM, then the exit status (it must exit on its own)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"gateway did not exit on SIGTERM:\n{self.output()}") from None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-5000:] if self.log.exists() else ""


@dataclass
class Sent:
    """One request of a load: its status (0: no answer) and the gateway's request id."""

    status: int
    request_id: str | None
    stream: bool


class Load:
    """Requests at a steady pace from ``workers`` concurrent clients until stopped: JSON and
    streamed answers alternately, mock/lorem's streams taking about a second each."""

    def __init__(self, base_url: str, secret: str, workers: int = 16, pause: float = 0.05) -> None:
        self.base_url = base_url
        self.secret = secret
        self.workers = workers
        self.pause = pause
        self.sent: list[Sent] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Load:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self._tasks = [asyncio.create_task(self._worker(n)) for n in range(self.workers)]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _worker(self, number: int) -> None:
        assert self._session is not None
        headers = {"Authorization": f"Bearer {self.secret}"}
        count = 0
        while not self._stop.is_set():
            stream = (number + count) % 2 == 1
            count += 1
            body = {
                "model": "mock/lorem" if stream else "mock/echo",
                "messages": [{"role": "user", "content": f"request {number}-{count}"}],
                "stream": stream,
            }
            try:
                async with self._session.post(
                    self.base_url + "/v1/chat/completions", json=body, headers=headers
                ) as response:
                    await response.read()
                    status, request_id = response.status, response.headers.get("x-request-id")
            except (aiohttp.ClientError, TimeoutError):
                status, request_id = 0, None  # the gateway is going away: no answer
            self.sent.append(Sent(status, request_id, stream))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.pause):
                    await self._stop.wait()

    def answered(self) -> list[str]:
        """The request ids of every request that got an answer."""
        return [s.request_id for s in self.sent if s.request_id is not None]
