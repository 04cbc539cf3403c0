"""The OpenAI-compatible surface: ``/v1/chat/completions``, ``/v1/models``, ``/v1/key``,
``/v1/generation``.
"""

from __future__ import annotations

import asyncio

import orjson

from llmrelay.accounting.pricing import nanos_to_usd
from llmrelay.api.asgi import (
    SSE_HEADERS,
    ClientDisconnected,
    Headers,
    Request,
    Send,
    send_json,
    send_openai_error,
)
from llmrelay.api.streaming import DisconnectWatcher, stream, uncancel_if_client_gone
from llmrelay.core.chunks import PlainShape, RawChunk
from llmrelay.core.errors import GatewayError, InvalidRequest, NotFound
from llmrelay.core.exchange import Exchange
from llmrelay.core.pipeline import Gateway
from llmrelay.core.sse import DONE
from llmrelay.core.types import ChatRequest, JSONObject, Usage
from llmrelay.core.validate import parse_json_object, validate_chat_request

KEEPALIVE = b": PROCESSING\n\n"


class ChunkEncoder:
    """Canonical chunks → the client's ``data:`` lines, normalised to what OpenAI itself sends.

    One ``id``/``created``/``model`` for the whole stream, ``role`` only in each choice's first
    delta, a tool call's ``id``/``type``/``name`` only in its first fragment (the SDK's accumulator
    concatenates repeats), and usage only in the final ``choices: []`` chunk when asked for.
    """

    __slots__ = (
        "_exchange",
        "_include_usage",
        "_roles_sent",
        "_shape",
        "_shape_head",
        "_shape_sep",
        "_shape_tail",
        "_tool_calls_seen",
    )

    headers: Headers = SSE_HEADERS

    def __init__(self, exchange: Exchange, include_usage: bool) -> None:
        self._exchange = exchange
        self._include_usage = include_usage
        self._roles_sent: set[int] = set()
        self._tool_calls_seen: set[tuple[int, int]] = set()
        self._shape: PlainShape | None = None
        self._shape_head = b""
        self._shape_sep = b""
        self._shape_tail = b""

    def encode_raw(self, chunk: RawChunk) -> bytes | None:
        """Plain content chunks (``core/chunks.py``): each is the stream's ``id``/``object``/
        ``created``/``model`` followed by the upstream's own bytes after them, which is what
        ``encode`` would write for its parse; a run of them is one join. A choice's first delta
        goes through ``encode``, which gives it the role."""
        shape = chunk.shape
        texts = chunk.texts
        tails = chunk.tails
        first = b""
        if shape is not self._shape:
            if shape.index not in self._roles_sent:
                first = self.encode(chunk.parse(0)) or b""
                if len(texts) == 1:
                    return first
                texts = texts[1:]
                tails = tails[1:] if tails is not None else None
            exchange = self._exchange
            model = exchange.model.id if exchange.model is not None else exchange.requested_model
            self._shape = shape
            self._shape_head = (
                b'data: {"id":'
                + orjson.dumps(exchange.id)
                + b',"object":"chat.completion.chunk","created":'
                + orjson.dumps(exchange.created)
                + b',"model":'
                + orjson.dumps(model)
                + shape.after_head
            )
            self._shape_tail = shape.suffix_out + b"\n\n"
            self._shape_sep = self._shape_tail + self._shape_head
        head = self._shape_head
        if tails is None:
            return first + head + self._shape_sep.join(texts) + self._shape_tail
        out = shape.suffix_out
        pairs = zip(texts, tails, strict=True)
        return first + b"".join([head + text + out + tail + b"\n\n" for text, tail in pairs])

    def encode(self, chunk: JSONObject) -> bytes | None:
        choices = chunk.get("choices")
        if not choices:
            return None
        exchange = self._exchange
        chunk["id"] = exchange.id
        chunk["object"] = "chat.completion.chunk"
        chunk["created"] = exchange.created
        chunk["model"] = (
            exchange.model.id if exchange.model is not None else exchange.requested_model
        )
        for choice in choices:
            index = choice.get("index", 0)
            delta = choice["delta"]
            if index in self._roles_sent:
                delta.pop("role", None)
            else:
                self._roles_sent.add(index)
                choice["delta"] = delta = {"role": "assistant", **delta}
            if "finish_reason" not in choice:
                choice["finish_reason"] = None
            calls = delta.get("tool_calls")
            if calls:
                self._normalise_tool_calls(index, calls)
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _normalise_tool_calls(self, choice_index: int, calls: list[JSONObject]) -> None:
        for position, call in enumerate(calls):
            if "index" not in call:
                call["index"] = position
            marker = (choice_index, call["index"])
            if marker in self._tool_calls_seen:
                call.pop("id", None)
                call.pop("type", None)
                function = call.get("function")
                if function:
                    function.pop("name", None)
            else:
                self._tool_calls_seen.add(marker)

    def close(self, usage: Usage) -> bytes:
        if not self._include_usage:
            return DONE
        return self.usage_chunk(usage.to_openai()) + DONE

    def fail(self, error: GatewayError) -> bytes:
        return self.error_chunk(error) + DONE

    def usage_chunk(self, usage: JSONObject) -> bytes:
        exchange = self._exchange
        chunk = {
            "id": exchange.id,
            "object": "chat.completion.chunk",
            "created": exchange.created,
            "model": exchange.model.id if exchange.model is not None else None,
            "choices": [],
            "usage": usage,
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def error_chunk(self, error: GatewayError) -> bytes:
        exchange = self._exchange
        chunk = {
            "id": exchange.id,
            "object": "chat.completion.chunk",
            "created": exchange.created,
            "model": exchange.model.id if exchange.model is not None else None,
            "error": {
                "code": error.http_status,
                "type": error.error_type,
                "message": error.message,
            },
            "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}],
        }
        return b"data: " + orjson.dumps(chunk) + b"\n\n"


def resolved_headers(exchange: Exchange) -> Headers:
    headers: Headers = [(b"x-request-id", exchange.id.encode())]
    if exchange.model is not None:
        headers.append((b"x-resolved-model", exchange.model.id.encode()))
    if exchange.basket is not None:
        headers.append((b"x-route-basket", exchange.basket.encode()))
    return headers


class OpenAISurface:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    async def chat_completions(self, request: Request, send: Send) -> None:
        gateway = self.gateway
        try:
            key = await gateway.authenticate(request.api_key())
        except GatewayError as error:
            await send_openai_error(send, error)
            return
        exchange = Exchange(key, "openai")
        try:
            request.require_json()
            settings = gateway.settings
            raw = await request.body(
                settings.max_request_bytes, settings.client_body_timeout_seconds
            )
            body = parse_json_object(raw)
            chat = validate_chat_request(body)
            gateway.admit(exchange, chat)
        except ClientDisconnected:
            gateway.cancel(exchange)
            gateway.finish(exchange)
            return
        except GatewayError as error:
            gateway.fail(exchange, error)
            gateway.finish(exchange)
            await send_openai_error(send, error, resolved_headers(exchange))
            return
        watcher = DisconnectWatcher(request.receive, exchange)
        try:
            if chat.stream:
                await self._stream(exchange, chat, send, watcher)
            else:
                await self._complete(exchange, chat, send)
        except asyncio.CancelledError:
            if not uncancel_if_client_gone(exchange):
                raise
            gateway.cancel(exchange)
        finally:
            watcher.stop()
            gateway.finish(exchange)

    async def _complete(self, exchange: Exchange, chat: ChatRequest, send: Send) -> None:
        try:
            completion = await self.gateway.complete(exchange, chat)
        except GatewayError as error:
            self.gateway.fail(exchange, error)
            await send_openai_error(send, error, resolved_headers(exchange))
            return
        await send_json(send, 200, completion.body, resolved_headers(exchange))

    async def _stream(
        self, exchange: Exchange, chat: ChatRequest, send: Send, watcher: DisconnectWatcher
    ) -> None:
        async def send_error(error: GatewayError) -> None:
            await send_openai_error(send, error, resolved_headers(exchange))

        await stream(
            self.gateway,
            exchange,
            chat,
            send,
            watcher,
            ChunkEncoder(exchange, chat.include_usage),
            KEEPALIVE,
            lambda: SSE_HEADERS + resolved_headers(exchange),
            send_error,
            raw_chunks=True,
        )

    # -- the small GET endpoints --------------------------------------------------------------

    async def models(self, request: Request, send: Send) -> None:
        data = [
            {
                "id": model.id,
                "object": "model",
                "created": 0,
                "owned_by": model.provider,
                "context_window": model.context_window,
                "capabilities": sorted(model.capabilities),
                "pricing": {
                    "input": model.config.price.input,
                    "output": model.config.price.output,
                    "cached_input": model.config.price.cached_input,
                },
            }
            for model in self.gateway.catalogue
        ]
        await send_json(send, 200, {"object": "list", "data": data})

    async def key(self, request: Request, send: Send) -> None:
        try:
            cached = await self.gateway.authenticate(request.api_key())
            usage = await self.gateway.limiter.usage(cached)
        except GatewayError as error:
            await send_openai_error(send, error)
            return
        record = cached.record
        credits = record.credits_nanos
        await send_json(
            send,
            200,
            {
                "id": record.id,
                "name": record.name,
                "credits": None if credits is None else nanos_to_usd(credits),
                "credits_used": nanos_to_usd(usage.credits_used),
                "credits_remaining": (
                    None if credits is None else nanos_to_usd(credits - usage.credits_used)
                ),
                "credits_reserved": nanos_to_usd(usage.credits_reserved),
                "rpm": record.rpm,
                "tpm": record.tpm,
                "daily_tokens": record.daily_tokens,
                "tokens_today": usage.tokens_today,
                "models": list(record.models),
                "expires_at": record.expires_at,
            },
        )

    async def generation(self, request: Request, send: Send) -> None:
        try:
            cached = await self.gateway.authenticate(request.api_key())
            row_id = request.query.get("id")
            if not row_id:
                raise InvalidRequest(
                    "'id' is required: GET /v1/generation?id=<request id>", param="id"
                )
            row = await self.gateway.store.get_ledger_row(row_id)
            # Own requests only, the admin key's too (it reads others' through /admin/usage).
            if row is None or row.key_id != cached.record.id:
                raise NotFound(f"no generation {row_id!r} for this key (yet)", param="id")
        except GatewayError as error:
            await send_openai_error(send, error)
            return
        await send_json(
            send,
            200,
            {
                "id": row.id,
                "requested_model": row.requested_model,
                "model": row.model,
                "provider": row.provider,
                "basket": row.basket,
                "stream": row.stream,
                "status": row.status,
                "http_status": row.http_status,
                "error_type": row.error_type,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "cached_tokens": row.cached_tokens,
                "reasoning_tokens": row.reasoning_tokens,
                "cost": nanos_to_usd(row.cost_nanos),
                "estimated": row.estimated,
                "ttft_ms": row.ttft_ms,
                "latency_ms": row.latency_ms,
                "created": int(row.created),
            },
        )
