"""Run the real gateway and the emulators on loopback, each on its own thread and event loop.

Tests, benchmarks and demos use these so that a synchronous client (the official SDKs' sync
clients, raw sockets) and the servers never share an event loop: a client that blocks can never
stall the server it is testing, exactly as in production.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Awaitable, Coroutine
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Self, TypeVar

from llmrelay.accounting.records import LedgerRow
from llmrelay.app import App, create_app
from llmrelay.config import Settings
from llmrelay.server import Server
from llmrelay.testing.emulator import EmulatorServer, RecordedRequest

T = TypeVar("T")


class LoopThread:
    """An asyncio event loop running forever on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class ThreadedEmulator:
    """The provider emulators on a thread; ``requests`` is what they received."""

    def __init__(self) -> None:
        self._thread = LoopThread("emulator")
        self.server = EmulatorServer()
        self._thread.run(self.server.start())
        self.base_url = self.server.base_url

    @property
    def requests(self) -> list[RecordedRequest]:
        return list(self.server.requests)

    def wait_for_requests(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        return self._thread.run(self.server.wait_for_requests(count, timeout), timeout + 5)

    def close(self) -> None:
        self._thread.run(self.server.close())
        self._thread.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class RunningGateway:
    """A gateway served on loopback by the gateway's own server, with its admin key."""

    app: App
    base_url: str
    admin_key: str
    _thread: LoopThread
    server: Server

    def call(self, awaitable: Awaitable[T], timeout: float = 30.0) -> T:
        """Run a coroutine on the gateway's own loop (to read its store, flush its ledger...)."""

        async def wrap() -> T:
            return await awaitable

        return self._thread.run(wrap(), timeout)

    def create_key(self, **fields: Any) -> str:
        async def create() -> str:
            new = await self.app.keys.create(name=fields.pop("name", "test"), **fields)
            return new.secret

        return self.call(create())

    def ledger_row(self, request_id: str, timeout: float = 5.0) -> LedgerRow:
        """The request's ledger row, once the background writer has written it."""

        async def wait() -> LedgerRow:
            async with asyncio.timeout(timeout):
                while True:
                    await self.app.ledger.flush()
                    row = await self.app.store.get_ledger_row(request_id)
                    if row is not None:
                        return row
                    await asyncio.sleep(0.02)

        return self.call(wait(), timeout + 5)

    def ledger_rows(self) -> list[LedgerRow]:
        async def rows() -> list[LedgerRow]:
            await self.app.ledger.flush()
            return await self.app.store.ledger_rows(None, None, None, 100_000)

        return self.call(rows())

    def stop(self) -> None:
        try:
            self._thread.run(self.server.shutdown(), timeout=30)
        finally:
            self._thread.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_gateway(settings: Settings, admin_key: str = "lr-test-admin-key") -> RunningGateway:
    """Start a gateway for ``settings`` and wait until it accepts connections."""
    thread = LoopThread("gateway")
    app = create_app(settings)
    server = Server(app, host="127.0.0.1", port=0, graceful_seconds=5)

    async def start() -> None:
        async with asyncio.timeout(20):
            await server.start()
        await app.keys.ensure_admin(admin_key)

    thread.run(start())
    return RunningGateway(app, f"http://127.0.0.1:{server.port}", admin_key, thread, server)
