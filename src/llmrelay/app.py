"""ASGI assembly: ``create_app(settings)`` builds every part and wires the routes.

Nothing lives at module level: each app owns its store, key cache, ledger writer, HTTP client and
providers, created here and closed by the ASGI lifespan.
"""

from __future__ import annotations

import gc
import hmac
import logging
import os
from collections.abc import Awaitable, Callable

from llmrelay.accounting.credits import CreditBook
from llmrelay.accounting.keys import KeyService
from llmrelay.accounting.ledger import DiscardingLedger, LedgerWriter
from llmrelay.accounting.limits import create_limiter
from llmrelay.accounting.store import SqlStore
from llmrelay.api.admin import AdminSurface
from llmrelay.api.anthropic import AnthropicSurface
from llmrelay.api.asgi import (
    BodyDeadlines,
    Receive,
    Request,
    Scope,
    Send,
    send_bytes,
    send_json,
    send_openai_error,
)
from llmrelay.api.gemini import GeminiSurface, is_google_client
from llmrelay.api.openai import OpenAISurface
from llmrelay.config import Settings, load_settings
from llmrelay.core.catalogue import Catalogue
from llmrelay.core.errors import AuthenticationFailed, GatewayError, NotFound
from llmrelay.core.pipeline import Gateway
from llmrelay.core.routing import Router
from llmrelay.observability.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from llmrelay.observability.wiring import Observability
from llmrelay.providers.base import Provider
from llmrelay.providers.http import UpstreamClient
from llmrelay.providers.registry import build_providers
from llmrelay.ui import Dashboard

log = logging.getLogger("llmrelay")

Handler = Callable[[Request, Send], Awaitable[None]]

_ALIAS_PREFIXES = ("/api/v1/", "/llm/v1/")
_GEMINI_MODELS = ("/v1beta/models/", "/v1/models/")  # + "{model}:{action}", or "{model}"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "method_not_allowed"


class App:
    """The gateway as an ASGI application."""

    def __init__(self, settings: Settings, *, owns_process: bool = False) -> None:
        self.settings = settings
        self.owns_process = owns_process  # the server's own process, not a test's or an embedder's
        self.store = SqlStore(settings.database_url)
        book = CreditBook()
        self.keys = KeyService(self.store, settings.key_cache_seconds, book)
        # Without Redis, limits and credits live in this process; with it, in Redis (shared).
        self.limiter = create_limiter(settings, book, self.store)
        ledger_type = LedgerWriter if settings.accounting.enabled else DiscardingLedger
        self.ledger = ledger_type(self.store, settings.ledger, self.limiter)
        self.catalogue = Catalogue(settings)
        self.client = UpstreamClient()
        self.providers: dict[str, Provider] = build_providers(settings, self.client)
        self.observability = Observability(settings, self.ledger)
        self.gateway = Gateway(
            settings,
            self.catalogue,
            self.providers,
            self.keys,
            self.limiter,
            self.ledger,
            Router(settings.router, self.catalogue, None),
            self.store,
            self.observability.observers,
        )
        openai = OpenAISurface(self.gateway)
        anthropic = AnthropicSurface(self.gateway)
        gemini = GeminiSurface(self.gateway)
        admin = AdminSurface(self.gateway)
        self._routes: dict[str, dict[str, Handler]] = {
            "/v1/chat/completions": {"POST": openai.chat_completions},
            "/v1/models": {
                # google-genai 3.x lists models at /v1/models too, and wants Gemini's shape.
                "GET": lambda r, s: (
                    gemini.list_models(r, s) if is_google_client(r) else openai.models(r, s)
                )
            },
            "/v1/key": {"GET": openai.key},
            "/v1/generation": {"GET": openai.generation},
            "/v1/messages": {"POST": anthropic.messages},
            "/v1/messages/count_tokens": {"POST": anthropic.count_tokens},
            "/v1beta/models": {"GET": gemini.list_models},
            "/health": {"GET": self._health},
            "/metrics": {"GET": self._metrics},
            "/admin/keys": {
                "POST": lambda r, s: admin.dispatch(r, s, "create_key"),
                "GET": lambda r, s: admin.dispatch(r, s, "list_keys"),
            },
            "/admin/usage": {"GET": lambda r, s: admin.dispatch(r, s, "usage")},
        }
        self._key_routes: dict[str, dict[str, Handler]] = {
            "": {"DELETE": lambda r, s: admin.dispatch(r, s, "revoke_key")},
            "/credits": {"POST": lambda r, s: admin.dispatch(r, s, "add_credits")},
        }
        self._gemini_routes: dict[str, Handler] = {
            "POST": gemini.model_action,
            "GET": gemini.get_model,
        }
        self.dashboard = Dashboard(self.gateway)
        self._body_deadlines = BodyDeadlines()
        self.started = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if path.startswith(_ALIAS_PREFIXES):
            path = path[4:]
        params: dict[str, str] = {}
        methods = self._routes.get(path)
        if methods is None and path.startswith("/admin/keys/"):
            key_id, _, rest = path[len("/admin/keys/") :].partition("/")
            methods = self._key_routes.get("/" + rest if rest else "")
            params["key_id"] = key_id
        if methods is None and path.startswith(_GEMINI_MODELS):
            # The model name may contain "/" and ends in ":action": no table can hold it.
            params["target"] = path.partition("/models/")[2]
            methods = self._gemini_routes
        request = Request(scope, receive, params, self._body_deadlines)
        if methods is None and (path == "/ui" or path.startswith("/ui/")):
            await self.dashboard(request, send)
            return
        if methods is None:
            await send_openai_error(send, NotFound(f"no route {scope['method']} {scope['path']}"))
            return
        handler = methods.get(scope["method"])
        if handler is None:
            allowed = ", ".join(sorted(methods))
            await send_openai_error(
                send,
                MethodNotAllowed(f"{scope['method']} is not allowed here; use {allowed}"),
                [(b"allow", allowed.encode())],
            )
            return
        await handler(request, send)

    async def _health(self, request: Request, send: Send) -> None:
        await send_json(
            send,
            200,
            {
                "status": "ok",
                "models": len(self.catalogue),
                "providers": sorted(self.providers),
                "ledger_pending": self.ledger.pending,
            },
        )

    async def _metrics(self, request: Request, send: Send) -> None:
        expected = self.settings.metrics_key
        if expected is not None:
            given = request.api_key() or ""
            if not hmac.compare_digest(given.encode(), expected.encode()):
                await send_openai_error(
                    send, AuthenticationFailed("GET /metrics needs the configured metrics_key")
                )
                return
        body = self.observability.metrics.render()
        await send_bytes(send, 200, body, [(b"content-type", METRICS_CONTENT_TYPE.encode())])

    async def startup(self) -> None:
        await self.store.open()
        self.client.start()
        self.keys.start()
        await self.limiter.start()
        self.ledger.start()
        self.observability.start()
        self.started = True
        if self.owns_process:
            # Everything made at start-up (modules, config, catalogue, SQLAlchemy's metadata)
            # lives as long as the process: out of the collector's sight, a full collection no
            # longer walks it on the request path (docs/performance.md). Not when embedded: a
            # frozen object is never collected, and a test process starts hundreds of apps.
            gc.freeze()

    async def shutdown(self) -> None:
        await self.gateway.wait_background()
        await self.ledger.close()
        await self.limiter.close()  # after the ledger: a row it rejects refunds its cost
        await self.keys.stop()
        for provider in self.providers.values():
            await provider.close()
        await self.client.close()
        await self.store.close()
        await self.observability.close()

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    log.exception("start-up failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return


def create_app(settings: Settings, *, owns_process: bool = False) -> App:
    return App(settings, owns_process=owns_process)


def app_from_environment() -> App:
    """The application of one ``llmrelay serve --workers N`` worker, built after its fork from
    the config the parent left in the environment (also usable as an ASGI factory elsewhere)."""
    settings = load_settings(os.environ.get("LLMRELAY_CONFIG") or None)
    return create_app(settings, owns_process=True)
