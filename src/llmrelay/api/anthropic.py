"""The Anthropic Messages surface: ``POST /v1/messages`` and ``/v1/messages/count_tokens``.

Any catalogue model (or auto name, or a bare model name that is unique in the catalogue) answers
through the same pipeline as every other surface: the body becomes the canonical request
(``anthropic_request``), the answer a ``Message`` (``anthropic_answer``) or Anthropic's event
stream (``anthropic_stream``), and errors take Anthropic's shape with the contract's statuses.
Every answer carries ``request-id`` (read by the SDK) besides ``X-Request-Id`` and
``X-Resolved-Model``.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from llmrelay.api.anthropic_answer import to_message
from llmrelay.api.anthropic_request import NATIVE, model_name, reasoning_effort, to_chat_request
from llmrelay.api.anthropic_stream import PING, MessageEncoder, error_payload
from llmrelay.api.asgi import JSON_HEADERS, ClientDisconnected, Headers, Request, Send, send_bytes
from llmrelay.api.surface import TranslatingDialect, count_tokens, serve
from llmrelay.core.errors import GatewayError
from llmrelay.core.exchange import Exchange
from llmrelay.core.pipeline import Gateway
from llmrelay.core.types import ChatRequest, Completion, JSONObject, Usage


class MessagesDialect(TranslatingDialect):
    surface: ClassVar[str] = "anthropic"
    keepalive: ClassVar[bytes] = PING
    native: ClassVar[str] = NATIVE

    @property
    def counting(self) -> bool:
        return False

    def requested_model(self) -> str:
        return model_name(self._body)

    def convert(self, model: str) -> ChatRequest:
        return to_chat_request(self._body, model, upstream=self._upstream, counting=self.counting)

    def reasoning_effort(self) -> str | None:
        return reasoning_effort(self._body)

    def error_body(self, error: GatewayError) -> JSONObject:
        return error_payload(error)

    def headers(self, exchange: Exchange | None) -> Headers:
        headers = super().headers(exchange)
        if exchange is not None:
            headers.append((b"request-id", exchange.id.encode()))
        return headers

    def answer(self, exchange: Exchange, completion: Completion, usage: Usage) -> JSONObject:
        model = exchange.model.id if exchange.model is not None else ""
        return to_message(completion.body, exchange.id, model, usage, self._stops())

    def encoder(self, exchange: Exchange, chat: ChatRequest) -> MessageEncoder:
        return MessageEncoder(exchange, self._stops())

    def _stops(self) -> list[str]:
        stops = self._body.get("stop_sequences")
        return stops if isinstance(stops, list) else []


class _CountDialect(MessagesDialect):
    @property
    def counting(self) -> bool:
        return True


class AnthropicSurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def messages(self, request: Request, send: Send) -> None:
        await serve(MessagesDialect(self.gateway, request), send)

    async def count_tokens(self, request: Request, send: Send) -> None:
        dialect = _CountDialect(self.gateway, request)
        try:
            model, count = await count_tokens(dialect)
        except ClientDisconnected:
            return
        except GatewayError as error:
            await dialect.send_error(send, error)
            return
        body = orjson.dumps({"input_tokens": count})
        await send_bytes(send, 200, body, [*JSON_HEADERS, (b"x-resolved-model", model.id.encode())])
