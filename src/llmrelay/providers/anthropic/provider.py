"""The Anthropic Messages API provider: ``POST {base}/v1/messages`` with ``x-api-key``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from types import MappingProxyType
from typing import Any

import orjson

from llmrelay.config import ProviderConfig
from llmrelay.core.errors import UpstreamError, UpstreamProtocolError, UpstreamStatusError
from llmrelay.core.types import Completion, JSONObject
from llmrelay.providers.anthropic.convert import (
    finish_reason,
    message_from_wire,
    request_to_wire,
    usage_from_wire,
)
from llmrelay.providers.anthropic.stream import MessageStream
from llmrelay.providers.base import Provider, UpstreamRequest
from llmrelay.providers.canonical import choice, completion_body
from llmrelay.providers.capabilities import capabilities_for, check_request
from llmrelay.providers.http import UpstreamClient, UpstreamResponse
from llmrelay.providers.upstream import (
    event_json,
    read_error,
    read_json,
    sse_batches,
    unreadable_error,
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# What /v1/messages/count_tokens accepts of a Messages body (it refuses max_tokens, stream...).
COUNT_FIELDS = frozenset(
    {"model", "messages", "system", "tools", "tool_choice", "thinking", "mcp_servers"}
    | {"output_config", "cache_control", "context_management"}
)

# Anthropic's error types and the HTTP status each stands for (docs.claude.com/en/api/errors); an
# in-stream error has only its type to say what it means.
ERROR_STATUSES: Mapping[str, int] = MappingProxyType(
    {
        "invalid_request_error": 400,
        "authentication_error": 401,
        "billing_error": 402,
        "permission_error": 403,
        "not_found_error": 404,
        "request_too_large": 413,
        "rate_limit_error": 429,
        "api_error": 500,
        "timeout_error": 504,
        "overloaded_error": 529,
    }
)


class AnthropicProvider(Provider):
    def __init__(self, name: str, config: ProviderConfig, client: UpstreamClient) -> None:
        super().__init__(name, capabilities_for(config))
        self._client = client
        self._timeouts = config.timeouts
        self._url = (config.base_url or DEFAULT_BASE_URL).rstrip("/") + "/v1/messages"
        headers = {
            "content-type": "application/json",
            "anthropic-version": API_VERSION,
            **({"x-api-key": config.api_key} if config.api_key else {}),
            **config.headers,
        }
        self._headers = {**headers, "accept": "application/json"}
        self._stream_headers = {**headers, "accept": "text/event-stream"}
        self._count_url = self._url + "/count_tokens"

    # -- the contract -------------------------------------------------------------------------

    async def complete(self, call: UpstreamRequest) -> Completion:
        body = self._wire_body(call, stream=False)
        response = await self._client.post(
            self._url, body, self._headers, self._timeouts, self.name
        )
        try:
            if response.status != 200:
                raise await self._status_error(response)
            message = await read_json(response, self.name)
        finally:
            response.release()
        if not isinstance(message, dict) or message.get("type") != "message":
            raise self._error(200, message)
        usage = usage_from_wire(message["usage"]) if message.get("usage") else None
        canonical = message_from_wire(message.get("content") or [])
        body_out = completion_body(
            str(message.get("id") or ""),
            str(message.get("model") or call.model.upstream),
            int(time.time()),
            [choice(0, canonical, finish_reason(message.get("stop_reason")))],
            usage,
        )
        return Completion(body_out, usage)

    async def stream_batches(self, call: UpstreamRequest) -> AsyncIterator[list[JSONObject]]:
        body = self._wire_body(call, stream=True)
        response = await self._client.post(
            self._url, body, self._stream_headers, self._timeouts, self.name
        )
        try:
            if response.status != 200:
                raise await self._status_error(response)
            state = MessageStream(self.name)
            batch: list[JSONObject] = []
            try:
                async for events in sse_batches(response):
                    for event in events:
                        payload = event_json(event.data, self.name)
                        if payload.get("type", event.event) == "error":
                            raise self._error(200, payload)
                        batch.extend(state.feed(payload))
                        if state.done:
                            break
                    if batch:
                        yield batch
                        batch = []
                    if state.done:
                        return
            except UpstreamError:
                if batch:
                    yield batch  # the chunks read before the failing event go out first
                raise
            raise UpstreamProtocolError(
                f"provider {self.name!r} ended the stream before message_stop", provider=self.name
            )
        finally:
            # Reached on normal end, on error, and when the gateway closes this generator
            # because the client went away: the connection is dropped, never pooled half-read.
            response.close()

    async def count_tokens(self, call: UpstreamRequest) -> int | None:
        """Anthropic's own count of the prompt (``POST /v1/messages/count_tokens``, free)."""
        check_request(call.request, call.model, self.capabilities, self.name)
        wire = request_to_wire(call.request, call.model, stream=False)
        body = orjson.dumps({k: v for k, v in wire.items() if k in COUNT_FIELDS})
        response = await self._client.post(
            self._count_url, body, self._headers, self._timeouts, self.name
        )
        try:
            if response.status != 200:
                raise await self._status_error(response)
            payload = await read_json(response, self.name)
        finally:
            response.release()
        count = payload.get("input_tokens") if isinstance(payload, dict) else None
        if not isinstance(count, int) or isinstance(count, bool):
            raise self._error(200, payload)
        return count

    # -- wire and errors ----------------------------------------------------------------------

    def _wire_body(self, call: UpstreamRequest, *, stream: bool) -> bytes:
        check_request(call.request, call.model, self.capabilities, self.name)
        return orjson.dumps(request_to_wire(call.request, call.model, stream=stream))

    async def _status_error(self, response: UpstreamResponse) -> UpstreamError:
        payload, retry_after = await read_error(response)
        return self._error(response.status, payload, retry_after, response.content_type)

    def _error(
        self,
        status: int,
        payload: Any,
        retry_after: float | None = None,
        content_type: str | None = None,
    ) -> UpstreamError:
        """The one place an Anthropic failure becomes the gateway's error."""
        error = payload.get("error") if isinstance(payload, dict) else None
        if not isinstance(error, dict):
            return unreadable_error(status, content_type, self.name, retry_after)
        kind = str(error.get("type") or "api_error")
        message = f"provider {self.name!r}: {kind}: {error.get('message') or 'no message'}"
        if status == 200:  # an in-stream error: its type is all there is to go on
            status = ERROR_STATUSES.get(kind, 500)
        return UpstreamStatusError.from_status(
            status, message, provider=self.name, upstream_type=kind, retry_after=retry_after
        )
