"""The server around the protocol: listening, the ASGI lifespan, idle connections, shutdown.

``Server`` is embeddable (the test harness runs it on a thread's loop); ``run`` is what
``llmrelay serve`` calls for one process: uvloop, signals, and an exit status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

from llmrelay.server.lifespan import Lifespan
from llmrelay.server.protocol import HttpProtocol

log = logging.getLogger("llmrelay.server")

SWEEP_SECONDS = 1.0


class ServerState:
    """What every connection of one server shares."""

    __slots__ = ("connections", "date_header", "stopping", "tasks")

    def __init__(self) -> None:
        self.connections: set[HttpProtocol] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False
        self.date_header = b""
        self.refresh_date()

    def refresh_date(self) -> None:
        # Once a second for every response, instead of formatting a date per response.
        self.date_header = b"date: %s\r\n" % formatdate(usegmt=True).encode("ascii")


def bind_socket(host: str, port: int, backlog: int = 4096) -> socket.socket:
    """A listening TCP socket (what ``--workers`` hands to every worker)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


class Server:
    """An ASGI application served over HTTP/1.1 on one event loop."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        sock: socket.socket | None = None,
        backlog: int = 4096,
        keep_alive_seconds: float = 5.0,
        graceful_seconds: float = 30.0,
        lifespan: bool = True,
    ) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.sock = sock
        self.backlog = backlog
        self.keep_alive_seconds = keep_alive_seconds
        self.graceful_seconds = graceful_seconds
        self.state = ServerState()
        self.started = False
        self._lifespan = Lifespan(app) if lifespan else None
        self._servers: list[asyncio.base_events.Server] = []
        self._sweeper: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Run the application's start-up, then accept connections."""
        loop = asyncio.get_running_loop()
        if self._lifespan is not None:
            await self._lifespan.startup()
        state = self.state
        app = self.app

        def factory() -> HttpProtocol:
            return HttpProtocol(app, state, loop)

        if self.sock is not None:
            server = await loop.create_server(factory, sock=self.sock, backlog=self.backlog)
        else:
            server = await loop.create_server(
                factory, self.host, self.port, backlog=self.backlog, reuse_address=True
            )
        self._servers.append(server)
        if self.port == 0 and server.sockets:
            self.port = int(server.sockets[0].getsockname()[1])
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)
        self.started = True

    def _sweep(self) -> None:
        """Once a second: the date header, and idle keep-alive connections closed."""
        state = self.state
        state.refresh_date()
        loop = asyncio.get_running_loop()
        oldest = loop.time() - self.keep_alive_seconds
        for conn in list(state.connections):
            idle_since = conn.idle_since
            if idle_since is not None and idle_since < oldest and not conn.busy:
                conn.close()
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)

    async def shutdown(self, force: asyncio.Event | None = None) -> None:
        """Stop accepting, let requests in flight finish (at most ``graceful_seconds``, or
        until ``force`` is set), then run the application's shutdown."""
        state = self.state
        state.stopping = True
        for server in self._servers:
            server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(state.connections):
            if not conn.busy:
                conn.close()  # idle keep-alive connections; busy ones close after their answer
        if state.tasks:
            waiting = asyncio.ensure_future(asyncio.wait(list(state.tasks)))
            forced = asyncio.ensure_future(force.wait()) if force is not None else None
            pending = [waiting] if forced is None else [waiting, forced]
            await asyncio.wait(
                pending, timeout=self.graceful_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if forced is not None:
                forced.cancel()
            if not waiting.done():
                log.warning("cancelling %d requests still in flight", len(state.tasks))
                for task in list(state.tasks):
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait_for(waiting, timeout=5)
        for conn in list(state.connections):
            conn.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=1)
        if self._lifespan is not None:
            await self._lifespan.shutdown()


def run(
    app_factory: Callable[[], Any],
    *,
    host: str,
    port: int,
    sock: socket.socket | None = None,
    graceful_seconds: float = 30.0,
    on_started: Callable[[Server], None] | None = None,
) -> int:
    """Serve until SIGTERM or SIGINT (a second one skips the wait for requests in flight);
    the exit status: 0 after a clean shutdown, 1 when the application failed to start."""
    if sys.platform != "win32":
        import uvloop

        uvloop.install()

    async def main() -> int:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        force = asyncio.Event()

        def on_signal() -> None:
            if stop.is_set():
                force.set()
            stop.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal)
        server = Server(
            app_factory(), host=host, port=port, sock=sock, graceful_seconds=graceful_seconds
        )
        try:
            await server.start()
        except Exception:
            log.exception("the gateway failed to start")
            return 1
        log.info("serving on http://%s:%d (pid %d)", host, server.port, os.getpid())
        if on_started is not None:
            on_started(server)
        await stop.wait()
        log.info("shutting down: waiting for requests in flight")
        await server.shutdown(force)
        return 0

    return asyncio.run(main())
