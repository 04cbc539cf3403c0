"""The Gemini surface: ``POST /v1beta/models/{model}:generateContent``, ``:streamGenerateContent``
and ``:countTokens`` (also under ``/v1/models/...``, which google-genai 3.x calls), and
``GET /v1beta/models[/{model}]`` (also ``GET /v1/models`` when the caller is a Google client).

``{model}`` is a catalogue id, written as a literal path (``openai/gpt-4o``) or URL-encoded
(``openai%2Fgpt-4o``; the ASGI path arrives decoded), an auto name, or a bare model name that is
unique in the catalogue (``gemini-2.5-flash`` → ``google/gemini-2.5-flash``). The ``:action`` is
the part after the last colon. Any catalogue model answers, through the same pipeline as every
other surface; errors take Google's ``Status`` shape with the contract's HTTP statuses.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from llmrelay.api.asgi import JSON_HEADERS, ClientDisconnected, Request, Send, send_bytes
from llmrelay.api.gemini_answer import to_response
from llmrelay.api.gemini_request import NATIVE, reasoning_effort, to_chat_request
from llmrelay.api.gemini_stream import KEEPALIVE, GenerateEncoder, error_payload
from llmrelay.api.surface import TranslatingDialect, count_tokens, resolve_model_name, serve
from llmrelay.core.catalogue import ModelEntry
from llmrelay.core.errors import GatewayError, NotFound
from llmrelay.core.exchange import Exchange
from llmrelay.core.pipeline import Gateway
from llmrelay.core.types import ChatRequest, Completion, JSONObject, Usage

GENERATE = "generateContent"
STREAM = "streamGenerateContent"
COUNT = "countTokens"
_METHODS = [GENERATE, STREAM, COUNT]


def split_target(target: str) -> tuple[str, str]:
    """``"openai/gpt-4o:generateContent"`` → ``("openai/gpt-4o", "generateContent")``; the
    action is after the last colon, so model names with colons (``llama3:8b``) survive."""
    model, colon, action = target.rpartition(":")
    if not colon:
        return target, ""
    return model, action


def is_google_client(request: Request) -> bool:
    """A ``GET /v1/models`` from google-genai (it authenticates with ``x-goog-api-key``)."""
    return request.header(b"x-goog-api-key") is not None or "key" in request.query


class GenerateDialect(TranslatingDialect):
    surface: ClassVar[str] = "gemini"
    keepalive: ClassVar[bytes] = KEEPALIVE
    native: ClassVar[str] = NATIVE

    def __init__(self, gateway: Gateway, request: Request, model: str, *, stream: bool) -> None:
        super().__init__(gateway, request)
        self._model = model
        self._stream = stream

    def requested_model(self) -> str:
        return self._model

    def convert(self, model: str) -> ChatRequest:
        return to_chat_request(self._body, model, stream=self._stream, upstream=self._upstream)

    def reasoning_effort(self) -> str | None:
        return reasoning_effort(self._body)

    def error_body(self, error: GatewayError) -> JSONObject:
        return error_payload(error)

    def answer(self, exchange: Exchange, completion: Completion, usage: Usage) -> JSONObject:
        model = exchange.model.id if exchange.model is not None else ""
        return to_response(completion.body, exchange.id, model, usage)

    def encoder(self, exchange: Exchange, chat: ChatRequest) -> GenerateEncoder:
        return GenerateEncoder(exchange, sse=self.request.query.get("alt") == "sse")


class GeminiSurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def model_action(self, request: Request, send: Send) -> None:
        """``POST .../models/{model}:{action}`` (``path_params["target"]``)."""
        model, action = split_target(request.path_params.get("target", ""))
        if action in (GENERATE, STREAM):
            dialect = GenerateDialect(self.gateway, request, model, stream=action == STREAM)
            await serve(dialect, send)
        elif action == COUNT and model:
            await self._count_tokens(request, send, model)
        else:
            error = NotFound(
                f"unknown method {action!r}: use {', '.join(_METHODS)} (POST /v1beta/models/"
                "{model}:{method})"
            )
            await _send_error(send, error)

    async def _count_tokens(self, request: Request, send: Send, model: str) -> None:
        dialect = GenerateDialect(self.gateway, request, model, stream=False)
        try:
            entry, count = await count_tokens(dialect)
        except ClientDisconnected:
            return
        except GatewayError as error:
            await dialect.send_error(send, error)
            return
        body = orjson.dumps({"totalTokens": count})
        await send_bytes(send, 200, body, [*JSON_HEADERS, (b"x-resolved-model", entry.id.encode())])

    async def list_models(self, request: Request, send: Send) -> None:
        models = [_model_info(model) for model in self.gateway.catalogue]
        await send_bytes(send, 200, orjson.dumps({"models": models}), JSON_HEADERS)

    async def get_model(self, request: Request, send: Send) -> None:
        """``GET .../models/{model}``."""
        target = request.path_params.get("target", "")
        catalogue = self.gateway.catalogue
        model = catalogue.get(resolve_model_name(catalogue, target))
        if model is None:
            await _send_error(send, NotFound(f"model {target!r} is not in this catalogue"))
            return
        await send_bytes(send, 200, orjson.dumps(_model_info(model)), JSON_HEADERS)


def _model_info(model: ModelEntry) -> JSONObject:
    info: JSONObject = {
        "name": f"models/{model.id}",
        "baseModelId": model.id,
        "version": "1",
        "displayName": model.id,
        "description": f"{model.id}, served by provider {model.provider!r} through llmrelay",
        "supportedGenerationMethods": _METHODS,
    }
    if model.context_window is not None:
        info["inputTokenLimit"] = model.context_window
    if model.max_output_tokens is not None:
        info["outputTokenLimit"] = model.max_output_tokens
    return info


async def _send_error(send: Send, error: GatewayError) -> None:
    await send_bytes(send, error.http_status, orjson.dumps(error_payload(error)), JSON_HEADERS)
