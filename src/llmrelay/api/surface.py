"""What the translating inbound surfaces (Anthropic, Gemini) share: the request lifecycle.

A surface supplies its wire format as a :class:`Dialect` (one instance per request): how a body
becomes the canonical request, how a completion, a stream and an error are written. :func:`serve`
runs everything else exactly as the OpenAI surface does — authenticate → ``Exchange`` → body with
its size and time caps → validate → ``Gateway.admit`` → ``DisconnectWatcher`` →
``complete`` / ``open_stream`` + relay through a keep-alive ``StreamWriter`` → ``fail`` /
``cancel`` / ``finish`` — so auth, limits, routing, retries, fallbacks, cancellation and billing
cannot differ between surfaces.

Chunks reach a dialect's :class:`StreamEncoder` as canonical dicts, never as another surface's SSE
text: each encoder is a state machine from canonical chunks to its own events.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import ClassVar

import orjson

from llmrelay.accounting.keys import KeyService
from llmrelay.api.asgi import (
    JSON_HEADERS,
    ClientDisconnected,
    Headers,
    Request,
    Send,
    error_headers,
    send_bytes,
)
from llmrelay.api.openai import resolved_headers
from llmrelay.api.streaming import (
    DisconnectWatcher,
    StreamEncoder,
    stream,
    uncancel_if_client_gone,
)
from llmrelay.core.catalogue import Catalogue, ModelEntry
from llmrelay.core.errors import GatewayError, NotFound
from llmrelay.core.exchange import Exchange, new_request_id
from llmrelay.core.pipeline import Gateway
from llmrelay.core.types import ChatRequest, Completion, JSONObject, Usage
from llmrelay.core.validate import parse_json_object
from llmrelay.providers.base import UpstreamRequest


class Dialect(ABC):
    """One inbound API's wire format around the shared lifecycle; one instance per request."""

    surface: ClassVar[str]
    keepalive: ClassVar[bytes]

    def __init__(self, gateway: Gateway, request: Request) -> None:
        self.gateway = gateway
        self.request = request

    @abstractmethod
    def parse(self, body: bytes) -> ChatRequest:
        """The canonical request; a 400 names the field in the client's own terms."""

    def routed(self, exchange: Exchange, chat: ChatRequest) -> ChatRequest:
        """The request as the routed model should see it (``exchange.model`` is now known)."""
        return chat

    @abstractmethod
    def error_body(self, error: GatewayError) -> JSONObject: ...

    def headers(self, exchange: Exchange | None) -> Headers:
        return resolved_headers(exchange) if exchange is not None else []

    @abstractmethod
    def answer(self, exchange: Exchange, completion: Completion, usage: Usage) -> JSONObject:
        """A whole completion in the surface's shape."""

    @abstractmethod
    def encoder(self, exchange: Exchange, chat: ChatRequest) -> StreamEncoder: ...

    async def send_error(
        self, send: Send, error: GatewayError, exchange: Exchange | None = None
    ) -> None:
        body = orjson.dumps(self.error_body(error))
        headers = JSON_HEADERS + error_headers(error, self.headers(exchange))
        await send_bytes(send, error.http_status, body, headers)


class TranslatingDialect(Dialect):
    """A dialect whose body is converted for the type of provider that will serve it.

    The same dialect in and out passes its own extras through (``native``); when routing picks
    a model of another provider type than the one named, the body is converted again, and
    the client's reasoning setting becomes ``reasoning_effort`` for models that reason.
    """

    native: ClassVar[str]

    def __init__(self, gateway: Gateway, request: Request) -> None:
        super().__init__(gateway, request)
        self._body: JSONObject = {}
        self._upstream: str | None = None

    @abstractmethod
    def requested_model(self) -> str:
        """The model the client named, in its own dialect."""

    @abstractmethod
    def convert(self, model: str) -> ChatRequest:
        """``self._body`` as the canonical request for ``model`` and ``self._upstream``."""

    @abstractmethod
    def reasoning_effort(self) -> str | None:
        """The client's reasoning setting as an OpenAI ``reasoning_effort``, if it set one."""

    def parse(self, body: bytes) -> ChatRequest:
        self._body = parse_json_object(body)
        model = resolve_model_name(self.gateway.catalogue, self.requested_model())
        self._upstream = model_type(self.gateway, model)
        return self.convert(model)

    def routed(self, exchange: Exchange, chat: ChatRequest) -> ChatRequest:
        upstream = provider_type(self.gateway, exchange.model)
        if upstream != self._upstream:
            # An auto name routed to a model whose dialect's extras differ: convert again.
            self._upstream = upstream
            chat = self.convert(chat.model)
            exchange.messages = chat.messages
        if upstream != self.native:
            effort = self.reasoning_effort()
            if effort is not None and can_reason(exchange.model):
                chat.body["reasoning_effort"] = effort
        return chat


async def serve(dialect: Dialect, send: Send) -> None:
    """One request through the pipeline, written in ``dialect``'s wire format."""
    gateway = dialect.gateway
    request = dialect.request
    try:
        key = await gateway.authenticate(request.api_key())
    except GatewayError as error:
        await dialect.send_error(send, error)
        return
    exchange = Exchange(key, dialect.surface)
    try:
        request.require_json()
        settings = gateway.settings
        raw = await request.body(settings.max_request_bytes, settings.client_body_timeout_seconds)
        chat = dialect.parse(raw)
        gateway.admit(exchange, chat)
        chat = dialect.routed(exchange, chat)
    except ClientDisconnected:
        gateway.cancel(exchange)
        gateway.finish(exchange)
        return
    except GatewayError as error:
        gateway.fail(exchange, error)
        gateway.finish(exchange)
        await dialect.send_error(send, error, exchange)
        return
    watcher = DisconnectWatcher(request.receive, exchange)
    try:
        if chat.stream:
            await _stream(dialect, exchange, chat, send, watcher)
        else:
            await _complete(dialect, exchange, chat, send)
    except asyncio.CancelledError:
        if not uncancel_if_client_gone(exchange):
            raise
        gateway.cancel(exchange)
    finally:
        watcher.stop()
        gateway.finish(exchange)


async def _complete(dialect: Dialect, exchange: Exchange, chat: ChatRequest, send: Send) -> None:
    gateway = dialect.gateway
    try:
        completion = await gateway.complete(exchange, chat)
    except GatewayError as error:
        gateway.fail(exchange, error)
        await dialect.send_error(send, error, exchange)
        return
    usage, _ = gateway.final_usage(exchange)
    body = orjson.dumps(dialect.answer(exchange, completion, usage))
    await send_bytes(send, 200, body, JSON_HEADERS + dialect.headers(exchange))


async def _stream(
    dialect: Dialect,
    exchange: Exchange,
    chat: ChatRequest,
    send: Send,
    watcher: DisconnectWatcher,
) -> None:
    encoder = dialect.encoder(exchange, chat)

    async def send_error(error: GatewayError) -> None:
        await dialect.send_error(send, error, exchange)

    await stream(
        dialect.gateway,
        exchange,
        chat,
        send,
        watcher,
        encoder,
        dialect.keepalive,
        lambda: encoder.headers + dialect.headers(exchange),
        send_error,
    )


async def count_tokens(dialect: Dialect) -> tuple[ModelEntry, int]:
    """The provider's exact count of the request's input tokens, or 404: never an estimate
    posing as a count.

    Counting is free upstream and generates nothing, so it is not metered in the ledger; the key
    must still be valid and allowed the model. Raises ``ClientDisconnected`` as ``Request.body``.
    """
    gateway = dialect.gateway
    request = dialect.request
    key = await gateway.authenticate(request.api_key())
    request.require_json()
    settings = gateway.settings
    raw = await request.body(settings.max_request_bytes, settings.client_body_timeout_seconds)
    chat = dialect.parse(raw)
    model = gateway.router.route(chat).model
    KeyService.check_model(key, model.id)
    chat = dialect.routed(Exchange(key, dialect.surface, model=model), chat)
    provider = gateway.providers.get(model.provider)
    count = None
    if provider is not None:
        count = await provider.count_tokens(UpstreamRequest(chat, model, new_request_id()))
    if count is None:
        raise NotFound(
            f"no exact token count is available for model {model.id!r}: its provider has no "
            "token counting endpoint",
            param="model",
        )
    return model, count


# -- helpers both surfaces use ----------------------------------------------------------------


def resolve_model_name(catalogue: Catalogue, name: str) -> str:
    """A catalogue id or auto name as is; else the one id whose part after ``provider/`` is
    ``name`` (``claude-sonnet-4-5`` → ``anthropic/claude-sonnet-4-5``), so clients that only
    know a provider's bare model names work; else ``name`` (routing then answers 404)."""
    if catalogue.get(name) is not None or catalogue.is_auto(name):
        return name
    found = [model.id for model in catalogue if model.id.partition("/")[2] == name]
    return found[0] if len(found) == 1 else name


def provider_type(gateway: Gateway, model: ModelEntry | None) -> str | None:
    """The wire type (``openai``, ``anthropic``, ``gemini``...) of the provider serving ``model``.

    A surface asks this for one reason only: to hand its own dialect's extras (signed thinking
    blocks, ``cache_control``, thought signatures) to an upstream that speaks that same dialect,
    and to no other.
    """
    if model is None:
        return None
    config = gateway.settings.providers.get(model.provider)
    return config.type if config is not None else None


def model_type(gateway: Gateway, name: str) -> str | None:
    """``provider_type`` of a catalogue id; None for an auto name or an unknown model."""
    return provider_type(gateway, gateway.catalogue.get(name))


def can_reason(model: ModelEntry | None) -> bool:
    """Whether a thinking request may become ``reasoning_effort`` for this model: only models
    that declare the ``reasoning`` capability get it (others refuse the field upstream)."""
    return model is not None and "reasoning" in model.capabilities
