"""Assemble the provider emulators into one aiohttp app and run it.

``build_app()`` mounts every provider; :class:`EmulatorServer` runs it on loopback for a test;
:func:`serve_forever` runs it for ``llmrelay mock-upstream``. Every request is recorded (see
:class:`~llmrelay.testing.emulator.recording.RecordedRequest`) by a middleware that also notes
client disconnects: the runner cancels a handler as soon as its client goes away.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Self

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from llmrelay.testing.emulator import anthropic, gemini, openai
from llmrelay.testing.emulator.recording import (
    RECORD_KEY,
    RECORDER_KEY,
    RecordedRequest,
    Recorder,
)

SHUTDOWN_TIMEOUT = 1.0


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@web.middleware
async def _record(request: web.Request, handler: Handler) -> web.StreamResponse:
    raw = await request.read()
    try:
        body = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        body = None
    record = RecordedRequest(
        method=request.method,
        path=request.path,
        query=dict(request.query),
        headers={name.lower(): value for name, value in request.headers.items()},
        json=body,
    )
    request.app[RECORDER_KEY].add(record)
    request[RECORD_KEY] = record
    try:
        response = await handler(request)
    except asyncio.CancelledError:
        if _client_gone(request):
            record.mark_disconnected()
        raise
    except web.HTTPException as exc:
        record.status = exc.status
        raise
    except ConnectionError:
        record.mark_disconnected()
        # Nothing can reach the client any more; aiohttp swallows the failed write of this.
        return web.Response(status=499)
    finally:
        record.finished_at = time.monotonic()
    record.completed = not (record.aborted or record.client_disconnected)
    return response


async def _list_models(request: web.Request) -> web.StreamResponse:
    # The three providers share the path: Anthropic's SDK sends `anthropic-version`, Google's a
    # Google API key, OpenAI's neither.
    if "anthropic-version" in request.headers:
        return await anthropic.list_models(request)
    if gemini.has_api_key(request):
        return await gemini.list_models(request)
    return await openai.list_models(request)


def build_app(*, record: bool = True) -> web.Application:
    """An app serving the OpenAI, Anthropic and Gemini emulators, with its own :class:`Recorder`.

    ``record=False`` keeps no requests (for long runs). Run it with ``handler_cancellation=True``
    (as :class:`EmulatorServer` does) so that a client disconnect is noticed at once, even while
    the emulator waits.
    """
    app = web.Application(middlewares=[_record], client_max_size=64 * 1024 * 1024)
    app[RECORDER_KEY] = Recorder(enabled=record)
    openai.add_routes(app)
    anthropic.add_routes(app)
    gemini.add_routes(app)
    app.router.add_get("/v1/models", _list_models)
    return app


class EmulatorServer:
    """Run the emulators on loopback for the duration of an ``async with`` block.

    ``port=0`` lets the OS choose a free port; read it from :attr:`port` or :attr:`base_url`.
    ``record=False`` keeps no requests (benchmarks).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, record: bool = True) -> None:
        self._host = host
        self._requested_port = port
        self.app = build_app(record=record)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._port is None:
            raise RuntimeError("the emulator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT`` (append ``/v1`` for an OpenAI client)."""
        return f"http://{self._host}:{self.port}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first."""
        return self.app[RECORDER_KEY].requests

    async def wait_for_requests(
        self,
        count: int,
        timeout: float = 5.0,  # noqa: ASYNC109 - a deadline for polling, part of the test API
        *,
        finished: bool = True,
    ) -> list[RecordedRequest]:
        """Wait until ``count`` requests arrived and (by default) finished; return the first."""
        return await self.app[RECORDER_KEY].wait_for(count, timeout, finished=finished)

    def clear_requests(self) -> None:
        """Forget the requests recorded so far (``wait_for_requests`` counts from here)."""
        self.app[RECORDER_KEY].clear()

    async def start(self) -> None:
        """Bind and start serving."""
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving; handlers still running are cancelled."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def serve_forever(host: str, port: int) -> None:
    """Serve the emulators on ``host:port`` until interrupted (``llmrelay mock-upstream``).

    Requests are not recorded: nothing reads them, and a long run would grow without bound.
    """
    web.run_app(
        build_app(record=False),
        host=host,
        port=port,
        handler_cancellation=True,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        print=lambda message: print(f"llmrelay mock-upstream: {message}", flush=True),
    )
